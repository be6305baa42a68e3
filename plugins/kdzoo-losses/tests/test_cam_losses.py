"""SDD and CAT-KD against their formulas, on fixed feature maps and fixed linear heads.

The references pool by explicit block means, classify with the heads' weights and write
the KD / DKD / MSE terms out in float64 numpy; none calls the package's helpers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kdzoo.api import CamHead, DistillBatch, ModelOutputs, Network, SetupContext
from kdzoo.testing import make_distill_batch, tiny_network_pair

B, K, SIDE = 4, 5, 4
C_S, C_T = 3, 6
TARGETS = torch.tensor([0, 3, 1, 4])


class Head(nn.Module):
    """A body laid out for a cam head: the feature map passes ``feat``, then GAP and ``fc``."""

    def __init__(self, channels: int, seed: int):
        super().__init__()
        self.feat = nn.Identity()
        self.fc = nn.Linear(channels, K)
        with torch.no_grad():
            generator = torch.Generator().manual_seed(seed)
            self.fc.weight.copy_(torch.randn(K, channels, generator=generator))
            self.fc.bias.copy_(torch.randn(K, generator=generator))

    def forward(self, x):
        return self.fc(self.feat(x).mean(dim=(2, 3)))


def network(channels: int, seed: int, cam: bool = True) -> Network:
    return Network(Head(channels, seed), num_classes=K, cam=CamHead("feat", "fc") if cam else None)


def feature_map(channels: int, seed: int) -> torch.Tensor:
    return torch.randn(B, channels, SIDE, SIDE, generator=torch.Generator().manual_seed(seed)).relu() * 2.0


def run(host, name, student_net, teacher_net, f_s, f_t, epoch=0, **params):
    loss = host.registry.build("loss", name, params)
    assert loss.taps(student_net, teacher_net) == (["feat"], ["feat"])
    loss.setup(SetupContext({}, [{}], student_net, [teacher_net], num_classes=K, num_samples=B))
    step = DistillBatch(
        student=ModelOutputs(torch.zeros(B, K), {"feat": f_s}),
        teachers=[ModelOutputs(torch.zeros(B, K), {"feat": f_t})],
        targets=TARGETS,
        images=torch.zeros(B, 3, SIDE, SIDE),
        indices=torch.arange(B),
        epoch=epoch,
        epochs=100,
    )
    return loss, loss(step)


# --------------------------------------------------------------------------- numpy references
def pooled(f: np.ndarray, s: int) -> np.ndarray:
    """(B, C, s, s) block means of a (B, C, SIDE, SIDE) map."""
    b, c, h, w = f.shape
    return f.reshape(b, c, s, h // s, s, w // s).mean(axis=(3, 5))


def head(net: Network) -> tuple[np.ndarray, np.ndarray]:
    fc = net.body.fc
    return fc.weight.detach().double().numpy(), fc.bias.detach().double().numpy()


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def kl(p, q):
    return float(np.sum(p * (np.log(p) - np.log(q))))


def region_logits(f: np.ndarray, net: Network, scales) -> list[np.ndarray]:
    """Region-major list of (B, K) logits: every cell of every grid, in scale then row-major order."""
    w, b = head(net)
    found = []
    for s in scales:
        grid = pooled(f, s)
        for i in range(s):
            for j in range(s):
                found.append(grid[:, :, i, j] @ w.T + b)
    return found


def ref_sdd(f_s, f_t, s_net, t_net, y, scales=(1, 2, 4), temperature=4.0, weight2=2.0, base="kd", alpha=1.0, beta=8.0):
    s_regions, t_regions = region_logits(f_s, s_net, scales), region_logits(f_t, t_net, scales)
    total, count, kinds = 0.0, 0, set()
    global_right = t_regions[0].argmax(axis=1) == y
    for zs, zt in zip(s_regions, t_regions):
        for i in range(len(y)):
            ps, pt = softmax(zs[i] / temperature), softmax(zt[i] / temperature)
            if base == "kd":
                term = kl(pt, ps)
            else:
                binary = kl([pt[y[i]], 1 - pt[y[i]]], [ps[y[i]], 1 - ps[y[i]]])
                rest = [c for c in range(K) if c != y[i]]
                term = alpha * binary + beta * kl(pt[rest] / pt[rest].sum(), ps[rest] / ps[rest].sum())
            consistent = (zt[i].argmax() == y[i]) == global_right[i]
            kinds.add(bool(consistent))
            total += (1.0 if consistent else weight2) * term
            count += 1
    return temperature**2 * total / count, kinds


def ref_catkd(f_s, f_t, s_net, t_net, resolution=2, normalize=False):
    cams = []
    for f, net in ((f_s, s_net), (f_t, t_net)):
        w, _ = head(net)
        cam = np.einsum("kc,bcij->bkij", w, pooled(f, resolution))  # the CAM has no bias
        if normalize:
            cam = cam / np.maximum(np.sqrt((cam**2).sum(axis=(2, 3), keepdims=True)), 1e-12)
        cams.append(cam)
    return float(np.mean((cams[0] - cams[1]) ** 2))


# --------------------------------------------------------------------------- values
SDD_CASES = [
    ({}, {}),
    ({"scales": [1, 2]}, {"scales": (1, 2)}),
    ({"temperature": 2.0, "complementary_weight": 3.0}, {"temperature": 2.0, "weight2": 3.0}),
    ({"base": "dkd", "alpha": 0.5, "beta": 2.0}, {"base": "dkd", "alpha": 0.5, "beta": 2.0}),
]


@pytest.mark.parametrize(("params", "reference_args"), SDD_CASES)
def test_sdd_matches_the_formula(host, params, reference_args):
    s_net, t_net = network(C_S, 1), network(C_T, 2)
    f_s, f_t = feature_map(C_S, 3), feature_map(C_T, 5)
    _, value = run(host, "sdd", s_net, t_net, f_s, f_t, **params)
    expected, kinds = ref_sdd(f_s.double().numpy(), f_t.double().numpy(), s_net, t_net, TARGETS.numpy(), **reference_args)
    assert kinds == {True, False}, "the fixture must hold consistent and complementary regions"
    assert value.dtype == torch.float32 and value.ndim == 0
    torch.testing.assert_close(value.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-6)


def test_sdd_warmup_and_global_scale(host):
    s_net, t_net = network(C_S, 1), network(C_T, 2)
    f_s, f_t = feature_map(C_S, 3), feature_map(C_T, 5)
    full = run(host, "sdd", s_net, t_net, f_s, f_t, base="dkd")[1]
    assert torch.allclose(run(host, "sdd", s_net, t_net, f_s, f_t, base="dkd", warmup_epochs=20, epoch=4)[1], full * 5 / 20)
    # One 1 x 1 region is plain KD on the networks' own logits (GAP then the head).
    _, global_only = run(host, "sdd", s_net, t_net, f_s, f_t, scales=[1])
    kd = host.registry.build("loss", "kd", {"temperature": 4.0})
    logits = DistillBatch(
        ModelOutputs(s_net.body(f_s)), [ModelOutputs(t_net.body(f_t))], TARGETS, torch.zeros(B, 3, 1, 1), torch.arange(B)
    )
    plain = kd(logits)
    torch.testing.assert_close(global_only, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("params", [{}, {"normalize": True}, {"resolution": 1}, {"resolution": 4}])
def test_catkd_matches_the_formula(host, params):
    s_net, t_net = network(C_S, 1), network(C_S + 1, 2)
    f_s, f_t = feature_map(C_S, 3), feature_map(C_S + 1, 4)
    _, value = run(host, "catkd", s_net, t_net, f_s, f_t, **params)
    expected = ref_catkd(f_s.double().numpy(), f_t.double().numpy(), s_net, t_net, **params)
    torch.testing.assert_close(value.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-7)
    same = network(C_S, 1)
    assert run(host, "catkd", s_net, same, f_s, f_s.clone(), **params)[1].item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", ["sdd", "catkd"])
def test_autocast_does_not_lower_the_heads_products(host, name):
    s_net, t_net = network(C_S, 1), network(C_T, 2)
    f_s, f_t = feature_map(C_S, 3), feature_map(C_T, 5)
    exact = run(host, name, s_net, t_net, f_s, f_t)[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = run(host, name, s_net, t_net, f_s, f_t)[1]
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, exact, rtol=1e-5, atol=1e-7)


def test_params_are_validated(host):
    from pydantic import ValidationError

    for bad in [{"scales": [2, 4]}, {"scales": [1, 1]}, {"scales": [1, 4, 2]}, {"scales": []}, {"base": "nkd"}]:
        with pytest.raises(ValidationError):
            host.registry.build("loss", "sdd", bad)
    with pytest.raises(ValidationError):
        host.registry.build("loss", "catkd", {"resolution": 0})


@pytest.mark.parametrize("name", ["sdd", "catkd"])
def test_a_network_without_a_cam_head_is_refused(host, name):
    loss = host.registry.build("loss", name, {})
    with pytest.raises(ValueError, match="cam head"):
        loss.taps(network(C_S, 1, cam=False), network(C_T, 2))
    with pytest.raises(ValueError, match="teacher network's cam head"):
        loss.taps(network(C_S, 1), network(C_T, 2, cam=False))


# --------------------------------------------------------------------------- with the engine's plumbing
@pytest.mark.parametrize("name", ["sdd", "catkd"])
def test_gradient_reaches_the_student_and_its_head_only(host, name):
    student, teacher = tiny_network_pair()
    loss = host.registry.build("loss", name, {})
    step = make_distill_batch(loss, student, teacher, teacher_requires_grad=True)
    loss(step).backward()
    assert step.images.grad is not None and step.images.grad.abs().sum() > 0
    assert student.body.fc.weight.grad is not None and student.body.fc.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert all(t.grad is None for out in step.teachers for t in [out.logits, *out.features.values()])
    # Neither network's head becomes a parameter (or state) of the loss.
    assert list(loss.parameters()) == [] and loss.state_dict() == {}


def test_each_teacher_is_read_through_its_own_head(host):
    student, first = tiny_network_pair(seed=0)
    _, second = tiny_network_pair(seed=5)
    loss = host.registry.build("loss", "sdd", {})
    both = loss(make_distill_batch(loss, student, [first, second]))
    alone = [loss(make_distill_batch(loss, student, [t])) for t in (first, second)]
    torch.testing.assert_close(both, (alone[0] + alone[1]) / 2)
    assert abs(alone[0].item() - alone[1].item()) > 1e-6
