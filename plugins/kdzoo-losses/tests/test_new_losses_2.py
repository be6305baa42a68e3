"""DIST+ and LumiNet against their formulas, written out independently in float64 numpy with
explicit loops (DIST: hunto/image_classification_sota ``lib/models/losses/dist_kd.py`` and
hunto/DIST_KD ``segmentation/losses/dist_kd.py``; LumiNet: ismail31416/LumiNet
``mdistiller/distillers/Luminet.py``); none calls the package's helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from kdzoo.api import CamHead, DistillBatch, ModelOutputs, Network, SetupContext
from kdzoo.testing import logits_batch, make_distill_batch, tiny_network_pair

B, K = 6, 5
C_S, C_T, SIDE = 3, 4, 2


def build(host, name, **params):
    return host.registry.build("loss", name, params)


def randn(*shape, seed, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def close(value: torch.Tensor, expected: float) -> None:
    torch.testing.assert_close(value.detach().double(), torch.tensor(float(expected), dtype=torch.float64), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- numpy references
def softmax_rows(x: np.ndarray, t: float = 1.0) -> np.ndarray:
    out = np.empty_like(x)
    for i, row in enumerate(x / t):
        e = np.exp(row - row.max())
        out[i] = e / e.sum()
    return out


def pearson(a: np.ndarray, b: np.ndarray, eps: float = 1e-8) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (math.sqrt((a * a).sum()) * math.sqrt((b * b).sum()) + eps))


def dist_reference(y_s: np.ndarray, y_t: np.ndarray, beta: float, gamma: float) -> float:
    inter = 1 - np.mean([pearson(y_s[i], y_t[i]) for i in range(y_s.shape[0])])
    intra = 1 - np.mean([pearson(y_s[:, c], y_t[:, c]) for c in range(y_s.shape[1])])
    return beta * inter + gamma * intra


def np_(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


# --------------------------------------------------------------------------- DIST+
class Body(nn.Module):
    """A body laid out for a cam head: the feature map passes ``feat``, then GAP and ``fc``."""

    def __init__(self, channels: int):
        super().__init__()
        self.feat = nn.Identity()
        self.fc = nn.Linear(channels, K)

    def forward(self, x):
        return self.fc(self.feat(x).mean(dim=(2, 3)))


def feature_rows(x: np.ndarray) -> np.ndarray:
    """One row per (sample, position): the channel values there."""
    return np.array([x[b, :, h, w] for b in range(x.shape[0]) for h in range(x.shape[2]) for w in range(x.shape[3])])


def dist_plus_run(host, f_s, f_t, z_s, z_t, **params):
    student_net, teacher_net = Network(Body(C_S), num_classes=K, cam=CamHead("feat", "fc")), Network(
        Body(C_T), num_classes=K, cam=CamHead("feat", "fc")
    )
    loss = build(host, "dist-plus", **params)
    assert loss.taps(student_net, teacher_net) == (["feat"], ["feat"])  # the cam map, before the pooling
    loss.setup(SetupContext({"feat": f_s.shape}, [{"feat": f_t.shape}], student_net, [teacher_net], num_classes=K, num_samples=B))
    step = DistillBatch(
        student=ModelOutputs(z_s, {"feat": f_s}),
        teachers=[ModelOutputs(z_t, {"feat": f_t})],
        targets=torch.zeros(B, dtype=torch.long),
        images=torch.zeros(B, 3, SIDE, SIDE),
        indices=torch.arange(B),
    )
    return loss, loss(step)


def test_dist_plus_is_dist_on_logits_plus_dist_on_aligned_feature_positions(host):
    z_s, z_t = randn(B, K, seed=1, scale=2.0), randn(B, K, seed=2, scale=3.0)
    f_s, f_t = randn(B, C_S, SIDE, SIDE, seed=3).relu(), randn(B, C_T, SIDE, SIDE, seed=4).relu() * 2
    params = dict(beta=1.5, gamma=0.5, tau=4.0, feature_weight=0.7, feature_beta=2.0, feature_gamma=0.3, feature_tau=1.5)
    loss, value = dist_plus_run(host, f_s, f_t, z_s, z_t, **params)
    conv = loss.aligners[0]
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.bias is not None

    logit = 16.0 * dist_reference(softmax_rows(np_(z_s), 4.0), softmax_rows(np_(z_t), 4.0), 1.5, 0.5)
    weight, bias = np_(conv.weight)[:, :, 0, 0], np_(conv.bias)
    aligned = np.einsum("oc,bchw->bohw", weight, np_(f_s)) + bias[None, :, None, None]
    feature = 1.5**2 * dist_reference(
        softmax_rows(feature_rows(aligned), 1.5), softmax_rows(feature_rows(np_(f_t)), 1.5), 2.0, 0.3
    )
    close(value, logit + 0.7 * feature)


def test_dist_plus_resizes_the_aligned_student_map_to_the_teachers(host):
    z_s, z_t = randn(B, K, seed=11), randn(B, K, seed=12)
    f_s, f_t = randn(B, C_S, 2 * SIDE, 2 * SIDE, seed=13).relu(), randn(B, C_T, SIDE, SIDE, seed=14).relu()
    loss, value = dist_plus_run(host, f_s, f_t, z_s, z_t)
    conv = loss.aligners[0]
    aligned = torch.nn.functional.interpolate(conv(f_s), size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    logit = 16.0 * dist_reference(softmax_rows(np_(z_s), 4.0), softmax_rows(np_(z_t), 4.0), 1.0, 1.0)
    feature = dist_reference(softmax_rows(feature_rows(np_(aligned))), softmax_rows(feature_rows(np_(f_t))), 1.0, 1.0)
    close(value, logit + feature)


def test_dist_plus_without_the_feature_term_is_dist_and_taps_nothing(host):
    z_s, z_t = randn(B, K, seed=5, scale=2.0), randn(B, K, seed=6, scale=3.0)
    plain = build(host, "dist-plus", feature_weight=0.0)
    student, teacher = tiny_network_pair()
    assert plain.taps(student, teacher) == ([], [])
    value = plain(logits_batch(z_s, [z_t]))
    close(value, 16.0 * dist_reference(softmax_rows(np_(z_s), 4.0), softmax_rows(np_(z_t), 4.0), 1.0, 1.0))
    close(value, build(host, "dist")(logits_batch(z_s, [z_t])).item())


def test_dist_plus_taps_the_map_before_pooling_and_trains_its_aligner(host):
    loss = build(host, "dist-plus")
    student, teacher = tiny_network_pair()
    assert loss.taps(student, teacher) == (["layer2"], ["layer2"])
    student.cam = None  # no cam head: the last stage
    assert loss.taps(student, teacher)[0] == ["layer2"]
    distill = make_distill_batch(loss, student, teacher, teacher_requires_grad=True)
    loss(distill).backward()
    assert loss.aligners[0].weight.grad is not None and distill.images.grad.abs().sum() > 0
    assert all(t.grad is None for out in distill.teachers for t in [out.logits, *out.features.values()])
    with pytest.raises(ValueError, match="no module 'nope'"):
        build(host, "dist-plus", student_layer="nope").taps(student, teacher)


# --------------------------------------------------------------------------- LumiNet
def perception_reference(z: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    out = np.empty_like(z)
    n = z.shape[0]
    for c in range(z.shape[1]):
        mean = sum(z[:, c]) / n
        var = sum((v - mean) ** 2 for v in z[:, c]) / n  # biased, as unbiased=False
        out[:, c] = (z[:, c] - mean) / math.sqrt(var + eps)
    return out


def luminet_reference(z_s, z_t, t, alpha, factor=1.0):
    p_s = softmax_rows(perception_reference(z_s), t)
    p_t = softmax_rows(perception_reference(z_t), t)
    kl = [sum(q * (math.log(q) - math.log(p)) for p, q in zip(p_s[i], p_t[i])) for i in range(z_s.shape[0])]
    return factor * alpha**2 * sum(kl) / len(kl)


@pytest.mark.parametrize(("epoch", "factor"), [(0, 1 / 20), (9, 10 / 20), (19, 1.0), (100, 1.0)])
def test_luminet_is_alpha_squared_kl_of_perception_logits_with_warmup(host, epoch, factor):
    z_s, z_t = randn(B, K, seed=7, scale=2.0), randn(B, K, seed=8, scale=3.0) + 1.0
    value = build(host, "luminet")(logits_batch(z_s, [z_t], epoch=epoch, epochs=240))
    close(value, luminet_reference(np_(z_s), np_(z_t), 4.0, 33.0, factor))


def test_luminet_params_and_batch_invariance(host):
    z_s, z_t = randn(B, K, seed=9, scale=2.0), randn(B, K, seed=10, scale=3.0)
    loss = build(host, "luminet", temperature=8.0, alpha=70.0, warmup_epochs=0)
    value = loss(logits_batch(z_s, [z_t]))
    close(value, luminet_reference(np_(z_s), np_(z_t), 8.0, 70.0))
    # perception reads each class against the batch: shifting and scaling a class column changes nothing
    shifted = z_s * torch.tensor([2.0, 1.0, 0.5, 3.0, 1.0]) + torch.tensor([5.0, -1.0, 0.0, 2.0, 7.0])
    torch.testing.assert_close(loss(logits_batch(shifted, [z_t])), value, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValidationError):
        build(host, "luminet", alpha=0.0)
    with pytest.raises(ValidationError):
        build(host, "dist-plus", feature_tau=0.0)
