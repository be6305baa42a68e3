"""ReviewKD against mdistiller's ``mdistiller/distillers/ReviewKD.py`` (``ABF``, the
deep-to-shallow loop of ``forward_train`` and ``hcl_loss``), transcribed here in plain torch
and run with the loss's own module weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def block_mean(x, size):
    """Average-pool (B, C, H, W) to (size, size) by integer blocks, written out."""
    b, c, h, w = x.shape
    return x.reshape(b, c, size, h // size, size, w // size).mean(dim=(3, 5))


def explicit_hcl(s, t, sizes=(4, 2, 1)):
    """One level of ``hcl_loss``: pools with l >= h skipped, weights halving from 1/2, / total."""
    loss, weight, total = ((s - t) ** 2).mean(), 1.0, 1.0
    for size in sizes:
        if size >= s.shape[-1]:
            continue
        weight /= 2
        loss = loss + weight * ((block_mean(s, size) - block_mean(t, size)) ** 2).mean()
        total += weight
    return loss / total


def eval_bn(x, bn):
    return (x - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps) * bn.weight.view(
        1, -1, 1, 1
    ) + bn.bias.view(1, -1, 1, 1)


def reference_abf(abf, x, y=None, shape=None, out_shape=None):
    """mdistiller's ``ABF.forward`` with the weights of kdzoo's module (eval-mode BN)."""
    n, _, h, w = x.shape
    x = eval_bn(F.conv2d(x, abf.reduce[0].weight), abf.reduce[1])
    if y is not None:
        y = F.interpolate(y, (shape, shape), mode="nearest")
        z = torch.sigmoid(F.conv2d(torch.cat([x, y], dim=1), abf.attention[0].weight, abf.attention[0].bias))
        x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
    if x.shape[-1] != out_shape:
        x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
    return eval_bn(F.conv2d(x, abf.output[0].weight, padding=1), abf.output[1]), x


def reference_review(abfs, features, shapes, out_shapes):
    """``forward_train``'s loop: ``features`` and ``abfs`` shallow to deep, ``shapes`` deep to shallow."""
    abfs, x = list(abfs)[::-1], features[::-1]
    results = []
    out_features, res_features = reference_abf(abfs[0], x[0], out_shape=out_shapes[0])
    results.append(out_features)
    for feature, abf, shape, out_shape in zip(x[1:], abfs[1:], shapes[1:], out_shapes[1:]):
        out_features, res_features = reference_abf(abf, feature, res_features, shape, out_shape)
        results.insert(0, out_features)
    return results


def randomise_batchnorms(module, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=generator))
            bn.running_var.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
            bn.weight.copy_(torch.randn(bn.num_features, generator=generator))
            bn.bias.copy_(torch.randn(bn.num_features, generator=generator))


STUDENT = {"s1": randn(4, 8, 4, 4, seed=1), "s2": randn(4, 16, 2, 2, seed=2), "e": randn(4, 16, seed=3)}
# The shallow teacher level is larger than the student's: the ABF output is upsampled to it.
TEACHER = {"t1": randn(4, 6, 8, 8, seed=4), "t2": randn(4, 12, 2, 2, seed=5), "e": randn(4, 12, seed=6)}


def test_hcl_weights_by_hand():
    # a 4x4 level: (mse + mse_2x2 / 2 + mse_1x1 / 4) / 1.75; a 1x1 level (the pooled one): the plain MSE
    a, b = randn(1, 1, 4, 4, seed=7), randn(1, 1, 4, 4, seed=8)
    by_hand = (((a - b) ** 2).mean() + ((block_mean(a, 2) - block_mean(b, 2)) ** 2).mean() / 2 + ((a.mean() - b.mean()) ** 2) / 4) / 1.75
    assert_close(explicit_hcl(a, b), by_hand)
    assert_close(explicit_hcl(a[..., :1, :1], b[..., :1, :1]), ((a[0, 0, 0, 0] - b[0, 0, 0, 0]) ** 2))


def test_default_reviews_the_pooled_embedding_as_the_deepest_level(harness):
    run = harness.on_features("reviewkd", STUDENT, [TEACHER], params={"warmup_epochs": 0})
    assert [(p.student_path, p.teacher_path) for p in run.loss.layer_pairs[0]] == [("s1", "t1"), ("s2", "t2"), ("e", "e")]
    fusions = run.modules()
    randomise_batchnorms(fusions, seed=9)
    run.loss.eval()
    shallow, middle, pooled = fusions
    assert pooled.attention is None and middle.attention is not None and shallow.attention is not None
    # fusion width: min(512, channels of the deepest student level, the 16-wide embedding)
    assert [f.reduce[0].out_channels for f in fusions] == [16, 16, 16]
    student_levels = [STUDENT["s1"], STUDENT["s2"], STUDENT["e"][:, :, None, None]]
    teacher_levels = [TEACHER["t1"], TEACHER["t2"], TEACHER["e"][:, :, None, None]]
    reviewed = reference_review(fusions, student_levels, shapes=[1, 2, 4], out_shapes=[1, 2, 8])
    assert [tuple(r.shape) for r in reviewed] == [(4, 6, 8, 8), (4, 12, 2, 2), (4, 12, 1, 1)]
    expected = sum(explicit_hcl(r, t) for r, t in zip(reviewed, teacher_levels))
    assert_close(run(), expected)
    # the pooled level takes part: its own MSE, and its fused residual reaches the shallower levels
    moved_embedding = dict(STUDENT, e=STUDENT["e"] + 1.0)
    moved = reference_review(fusions, [*student_levels[:2], moved_embedding["e"][:, :, None, None]], [1, 2, 4], [1, 2, 8])
    assert not torch.allclose(moved[0], reviewed[0]) and not torch.allclose(moved[1], reviewed[1])
    assert_close(run(student=moved_embedding), sum(explicit_hcl(r, t) for r, t in zip(moved, teacher_levels)))


def test_stages_form_fuses_the_stage_maps_only(harness):
    params = {"levels": "stages", "mid_channels": 5, "warmup_epochs": 0}
    run = harness.on_features("reviewkd", STUDENT, [TEACHER], params=params)
    assert [(p.student_path, p.teacher_path) for p in run.loss.layer_pairs[0]] == [("s1", "t1"), ("s2", "t2")]
    fusions = run.modules()
    randomise_batchnorms(fusions, seed=10)
    run.loss.eval()
    shallow, deep = fusions
    assert deep.attention is None and shallow.attention is not None and deep.reduce[0].out_channels == 5
    reviewed = reference_review(fusions, [STUDENT["s1"], STUDENT["s2"]], shapes=[2, 4], out_shapes=[2, 8])
    assert_close(run(), explicit_hcl(reviewed[0], TEACHER["t1"]) + explicit_hcl(reviewed[1], TEACHER["t2"]))
    # the stages form's width default: the deepest stage's 16 channels
    assert harness.on_features("reviewkd", STUDENT, [TEACHER], params={"levels": "stages"}).modules()[0].reduce[0].out_channels == 16


def test_fusion_width_is_capped_at_512(harness):
    student = {"s": randn(2, 4, 2, 2, seed=1), "e": randn(2, 600, seed=2)}
    teacher = {"t": randn(2, 4, 2, 2, seed=3), "e": randn(2, 8, seed=4)}
    fusions = harness.on_features("reviewkd", student, [teacher]).modules()
    assert [f.reduce[0].out_channels for f in fusions] == [512, 512]


def test_abf_convs_use_the_reference_initialisation(harness):
    # kaiming_uniform_(a=1): bound sqrt(3 / fan_in), sqrt(3) times PyTorch's default bound
    torch.manual_seed(0)
    student = {"s": randn(2, 64, 2, 2, seed=1), "e": randn(2, 64, seed=2)}
    teacher = {"t": randn(2, 32, 2, 2, seed=3), "e": randn(2, 32, seed=4)}
    shallow, _ = harness.on_features("reviewkd", student, [teacher]).modules()
    for conv in (shallow.reduce[0], shallow.output[0]):
        fan_in = conv.weight[0].numel()
        largest = conv.weight.abs().max().item()
        assert 1 / math.sqrt(fan_in) < largest <= math.sqrt(3 / fan_in)


def test_a_network_without_an_embedding_needs_the_stages_form(harness):
    maps = {"s1": randn(2, 4, 4, 4, seed=1), "s2": randn(2, 4, 2, 2, seed=2)}
    with pytest.raises(ValueError, match="reviewkd: the student network declares no embedding tap.*levels: stages"):
        harness.on_features("reviewkd", maps, [dict(maps)])
    assert len(harness.on_features("reviewkd", maps, [dict(maps)], params={"levels": "stages"}).modules()) == 2
