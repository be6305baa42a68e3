"""FCFD against the authors' CIFAR code (LiuDongyang6/FCFD ``classification/models/meta.py`` and
``classification/cifar/main.py``), written out here in plain torch: the bridges are applied with
their read-back weights by explicit conv + batch-norm arithmetic, each mixed path is run stage by
stage through the networks' own modules, and the MSE / KL terms are summed by hand."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from kdzoo.api import CamHead, Network
from kdzoo.testing import make_distill_batch
from kdzoo_feature_losses.fcfd import make_bridge

K = 5
STAGES = ["stage1", "stage2", "stage3"]


def conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


def chain_network(widths: tuple[int, int, int], seed: int) -> Network:
    """stem -> stage1 -> stage2 -> stage3 -> GAP -> fc, with post-ReLU stage outputs (as cifar-resnet)."""
    torch.manual_seed(seed)
    body = nn.Sequential(
        OrderedDict(
            stem=conv_bn_relu(3, widths[0], 1),
            stage1=conv_bn_relu(widths[0], widths[0], 1),
            stage2=conv_bn_relu(widths[0], widths[1], 2),
            stage3=conv_bn_relu(widths[1], widths[2], 2),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(widths[2], K),
        )
    )
    with torch.no_grad():  # non-trivial BN statistics and affine parameters
        for module in body.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        body.fc.weight.mul_(8.0)  # spread logits: the KL terms must weigh in the totals below
    return Network(body, num_classes=K, stages=STAGES, embedding="pool", cam=CamHead("stage3", "fc"))


def networks(seed: int = 0) -> tuple[Network, Network]:
    return chain_network((4, 8, 12), seed), chain_network((6, 10, 16), seed + 1)


def step(host, params: dict, seed: int = 0, **batch):
    student, teacher = networks(seed)
    loss = host.registry.build("loss", "fcfd", params)
    distill = make_distill_batch(loss, student, teacher, num_samples=8, **batch)
    return loss, distill, student, teacher


# --------------------------------------------------------------------------- the formula, by hand
def train_bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)


def apply_bridge(bridge: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    conv, bn = bridge[0], bridge[1]
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.bias is None
    y = train_bn(F.conv2d(x, conv.weight, None, padding=1), bn)
    assert isinstance(bridge[2], nn.LeakyReLU) and bridge[2].negative_slope == 0.1
    return torch.where(y > 0, y, 0.1 * y)


def mse(a, b):
    return ((a - b) ** 2).mean()


def pooled_mse(a, b):
    return mse(a.clamp(min=0).mean(dim=(2, 3)), b.clamp(min=0).mean(dim=(2, 3)))


def kl_batchmean(logits, teacher_logits, t):
    log_p = torch.log_softmax(logits / t, dim=1)
    q = torch.softmax(teacher_logits / t, dim=1)
    return (q * (torch.log(q) - log_p)).sum(dim=1).mean() * t * t


def expected_loss(loss, distill, student, teacher, paths, l2_weight=5.0, kl_weight=1.0, t=4.0, warmup=1.0):
    s = [distill.student.features[p].detach() for p in STAGES]
    tf = [distill.teachers[0].features[p].detach() for p in STAGES]
    z_t = distill.teachers[0].logits.detach()
    bridges = loss.per_teacher[0]
    bridged = [apply_bridge(bridges.to_teacher[k], s[k]) for k in range(3)]
    l2 = sum(mse(bridged[k], tf[k]) for k in range(3)) + pooled_mse(bridged[2], tf[2])
    kl = 0.0
    for direction, k in paths:
        if direction == "s2t":  # student stages 1..k, then the teacher's
            x = bridged[k]
            for j in range(k + 1, 3):
                x = teacher.submodule(STAGES[j])(x)
                l2 = l2 + mse(x, tf[j])
            l2 = l2 + pooled_mse(x, tf[2])
            logits = teacher.submodule("fc")(x.mean(dim=(2, 3)))
        else:  # teacher stages 1..k, then the student's (train mode: batch statistics)
            x = apply_bridge(bridges.to_student[k], tf[k])
            for j in range(k + 1, 3):
                x = student.submodule(STAGES[j])(x)
            logits = student.submodule("fc")(x.mean(dim=(2, 3)))
        kl = kl + kl_batchmean(logits, z_t, t)
    return l2_weight * warmup * l2 + kl_weight * kl


@pytest.mark.parametrize(
    ("path_type", "paths"),
    [
        ("nomix", []),
        ("s2t", [("s2t", 0), ("s2t", 1)]),
        ("t2s", [("t2s", 0), ("t2s", 1)]),
        ("bi", [("t2s", 0), ("t2s", 1), ("s2t", 0), ("s2t", 1)]),
    ],
)
def test_fcfd_is_the_references_appearance_and_function_terms(host, path_type, paths):
    # every candidate path drawn, so the sum does not depend on the draw
    loss, distill, student, teacher = step(host, {"path_type": path_type, "extra_paths": 4, "warmup_epochs": 0})
    value = loss(distill)
    with torch.no_grad():
        expected = expected_loss(loss, distill, student, teacher, paths)
    assert_close(value, expected, rtol=1e-5, atol=1e-6)
    if paths:  # the function terms alone
        loss.params.appearance_weight = 0.0
        with torch.no_grad():
            alone = expected_loss(loss, distill, student, teacher, paths, l2_weight=0.0)
        assert alone > 0.05  # not a vanishing term: the comparison below can tell KL directions apart
        assert_close(loss(distill), alone, rtol=1e-5, atol=1e-6)


def test_weights_temperature_and_warmup(host):
    params = {"path_type": "s2t", "extra_paths": 2, "temperature": 2.0, "appearance_weight": 0.02, "function_weight": 0.5}
    loss, distill, student, teacher = step(host, params, epoch=4)  # 5th epoch of a 20-epoch warm-up
    value = loss(distill)
    with torch.no_grad():
        expected = expected_loss(loss, distill, student, teacher, [("s2t", 0), ("s2t", 1)], 0.02, 0.5, 2.0, warmup=5 / 20)
        after = expected_loss(loss, distill, student, teacher, [("s2t", 0), ("s2t", 1)], 0.02, 0.5, 2.0)
    assert_close(value, expected, rtol=1e-5, atol=1e-6)
    assert_close(loss(replace(distill, epoch=30)), after, rtol=1e-5, atol=1e-6)  # the KL terms are never warmed up


def test_paths_are_drawn_without_replacement_from_the_candidates(host):
    loss, distill, *_ = step(host, {})
    assert loss.candidates(3) == [("t2s", 0), ("t2s", 1), ("s2t", 0), ("s2t", 1)]  # meta.py "bi", 4 stages with the stem
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        drawn = loss.sample_paths(3)
        assert len(drawn) == 2 and len(set(drawn)) == 2
        seen |= set(drawn)
    assert seen == set(loss.candidates(3))
    loss.params.extra_paths = 9  # more than there are: all of them
    assert sorted(loss.sample_paths(3)) == sorted(loss.candidates(3))


def test_gradient_reaches_the_student_through_the_frozen_teacher_and_never_the_teacher(host):
    loss, distill, student, teacher = step(host, {"path_type": "s2t", "extra_paths": 2}, teacher_requires_grad=True)
    loss(distill).backward()
    assert distill.images.grad is not None and distill.images.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert all(t.grad is None for out in distill.teachers for t in [out.logits, *out.features.values()])
    teacher_ids = {id(p) for p in teacher.parameters()} | {id(p) for p in student.parameters()}
    assert not any(id(p) in teacher_ids for p in loss.parameters())  # the networks are references, not the loss's
    bridges = loss.per_teacher[0]
    assert all(p.grad is not None for p in bridges.to_teacher.parameters())


def test_t2s_paths_leave_the_students_running_statistics_alone(host):
    loss, distill, student, _ = step(host, {"path_type": "t2s", "extra_paths": 2})
    before = {name: b.clone() for name, b in student.named_buffers()}
    loss(distill).backward()
    for name, buffer in student.named_buffers():
        assert torch.equal(buffer, before[name]), name
    assert student.submodule("fc").weight.grad is not None  # the student's head learns from the t2s paths


def test_two_teachers_give_the_mean_and_bf16_autocast_gives_fp32(host):
    student, first = networks(0)
    second = chain_network((8, 8, 8), 7)
    loss = host.registry.build("loss", "fcfd", {"path_type": "nomix"})
    distill = make_distill_batch(loss, student, [first, second], num_samples=8)
    both = loss(distill)
    singles = [loss.pair(distill.student, t, distill, i) for i, t in enumerate(distill.teachers)]
    assert_close(both, (singles[0] + singles[1]) / 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(distill)
    assert value.dtype == torch.float32 and torch.isfinite(value)


def test_bridges_follow_the_spatial_ratio_as_the_reference(host):
    same = make_bridge(torch.Size((2, 4, 8, 8)), torch.Size((2, 6, 8, 8)), activation=False)
    down = make_bridge(torch.Size((2, 4, 8, 8)), torch.Size((2, 6, 4, 4)), activation=True)
    up = make_bridge(torch.Size((2, 4, 4, 4)), torch.Size((2, 6, 8, 8)), activation=True)
    assert isinstance(same[0], nn.Conv2d) and same[0].bias is None and len(same) == 2
    assert isinstance(down[0], nn.Conv2d) and down[0].stride == (2, 2) and down[0].bias is not None
    assert isinstance(up[0], nn.ConvTranspose2d) and up[0].kernel_size == (4, 4)
    x = torch.randn(2, 4, 8, 8)
    assert down(x).shape == (2, 6, 4, 4) and up(torch.randn(2, 4, 4, 4)).shape == (2, 6, 8, 8)
    with pytest.raises(ValueError, match="factor of 2"):
        make_bridge(torch.Size((2, 4, 12, 12)), torch.Size((2, 6, 4, 4)), activation=True)


def test_networks_whose_stages_do_not_follow_one_another_are_refused(host):
    # stage1 and stage3 tapped: stage2 lies between them, so stage3 cannot run on stage1's output
    params = {"student_layers": ["stage1", "stage3"], "teacher_layers": ["stage1", "stage3"]}
    loss, distill, *_ = step(host, params)
    with pytest.raises(ValueError, match="not a chain of its tapped stages"):
        loss(distill)


def test_a_head_that_is_not_pooling_plus_classifier_is_refused(host):
    student, teacher = networks(0)
    teacher.body.stage3.append(nn.Conv2d(16, 16, 1))  # a layer between the last tapped output and the pooling
    teacher.cam = CamHead("stage3.0", "fc")
    loss = host.registry.build("loss", "fcfd", {"teacher_layers": ["stage1", "stage2", "stage3.0"]})
    distill = make_distill_batch(loss, student, teacher, num_samples=8)
    with pytest.raises(ValueError, match="cam classifier"):
        loss(distill)
