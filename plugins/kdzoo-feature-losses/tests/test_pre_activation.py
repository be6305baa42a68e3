"""AB and OFD tap the stages' pre-activation outputs, as RepDistiller (``preact=True``) and
mdistiller (``preact_feats``, ``get_bn_before_relu``) do, when a network declares them."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from kdzoo.api import Network


class ResidualStage(nn.Module):
    """conv -> bn -> (+ input projection) -> pre_activation -> ReLU: a one-block stage."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)
        self.pre_activation = nn.Identity()

    def forward(self, x):
        return torch.relu(self.pre_activation(self.bn(self.conv(x)) + self.shortcut(x)))


def residual_net(widths=(6, 12), declare=True) -> Network:
    torch.manual_seed(sum(widths))
    body = nn.Sequential()
    body.add_module("stage1", ResidualStage(3, widths[0], 1))
    body.add_module("stage2", ResidualStage(widths[0], widths[1], 2))
    body.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    body.add_module("fc", nn.Linear(widths[1], 5))
    for stage in (body.stage1, body.stage2):  # BN statistics that put part of the mass below 0
        nn.init.uniform_(stage.bn.weight, 0.5, 1.5)
        nn.init.uniform_(stage.bn.bias, -0.5, 0.5)
    stages = ["stage1", "stage2"]
    pre = dict(pre_activation_stages=[f"{s}.pre_activation" for s in stages], pre_activation_norms=[f"{s}.bn" for s in stages])
    return Network(body, num_classes=5, stages=stages, embedding="pool", **(pre if declare else {}))


@pytest.mark.parametrize("name", ["ab", "ofd"])
def test_ab_and_ofd_tap_the_declared_pre_activations(harness, name):
    student, teacher = residual_net((4, 8)), residual_net()
    run = harness.on_networks(name, student, [teacher], torch.rand(2, 3, 8, 8))
    assert run.taps[0] == (["stage1.pre_activation", "stage2.pre_activation"],) * 2
    teacher_features = run.forward()[1][0].features
    assert any((f < 0).any() for f in teacher_features.values())  # pre-ReLU: the sign is informative
    plain = harness.on_networks(name, residual_net((4, 8), declare=False), [residual_net(declare=False)], torch.rand(2, 3, 8, 8))
    assert plain.taps[0] == (["stage1", "stage2"],) * 2  # no declaration: the stages themselves


def mdistiller_margin(bn: nn.BatchNorm2d) -> torch.Tensor:
    """mdistiller OFD.get_margin_from_BN: E[x | x < 0] for x ~ N(beta, gamma^2), or -3|gamma|."""
    margins = []
    for s, m in zip(bn.weight.tolist(), bn.bias.tolist()):
        s = abs(s)
        below = 0.5 * (1 + math.erf(-m / s / math.sqrt(2)))  # Phi(-m / s)
        if below > 0.001:
            margins.append(-s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / below + m)
        else:
            margins.append(-3 * s)
    return torch.tensor(margins)


def test_ofd_margin_comes_from_the_batchnorm_before_the_relu(harness):
    teacher = residual_net()
    run = harness.on_networks("ofd", residual_net((4, 8)), [teacher], torch.rand(2, 3, 8, 8))
    for module, stage in zip(run.loss.per_teacher[0], (teacher.body.stage1, teacher.body.stage2)):
        assert module.margin_from_batchnorm
        assert_close(module.margin.flatten(), mdistiller_margin(stage.bn), atol=1e-5, rtol=1e-5)
        assert (module.margin < 0).all()


def test_a_network_must_declare_one_pre_activation_per_stage():
    with pytest.raises(ValueError, match="pre_activation_stages has 1 paths for 2 stages"):
        Network(nn.Linear(2, 2), num_classes=2, stages=["a", "b"], pre_activation_stages=["a.x"])


def test_reviewkd_matches_the_teachers_pre_activations_with_the_students_stages(harness):
    run = harness.on_networks("reviewkd", residual_net((4, 8)), [residual_net()], torch.rand(2, 3, 8, 8))
    student_taps, teacher_taps = run.taps[0]
    assert student_taps == ["stage1", "stage2", "pool"]  # mdistiller: the student's feats, then its pooled feature
    assert teacher_taps == ["stage1.pre_activation", "stage2.pre_activation", "pool"]  # the teacher's preact_feats
