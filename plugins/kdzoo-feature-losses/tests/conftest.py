"""Shared test harness: build a loss through the plugin host and run it on given features.

Two ways to feed a loss:
- ``harness.on_features``: fixed feature tensors keyed by fake module names (maps become
  the fake network's stages, the first (B, D) tensor its embedding), for formula checks;
- ``harness.on_networks``: tiny real CNNs tapped with forward hooks, as the core does.
"""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from kdzoo.api import DistillBatch, Loss, ModelOutputs, Network, SetupContext
from kdzoo.host.loading import load_plugins

@pytest.fixture(scope="session")
def host():
    mp = pytest.MonkeyPatch()
    mp.setenv("KDZOO_LOAD_PLUGINS", "kdzoo-feature-losses")
    try:
        return load_plugins()
    finally:
        mp.undo()


def feature_network(features: dict[str, Tensor], modules: dict[str, nn.Module] | None = None) -> Network:
    """A Network whose body has one (never run) module per feature name."""
    modules = modules or {}
    body = nn.ModuleDict({name: modules.get(name, nn.Identity()) for name in features})
    maps = [name for name, f in features.items() if f.ndim != 2]
    vectors = [name for name, f in features.items() if f.ndim == 2]
    return Network(body, num_classes=3, stages=maps, embedding=vectors[0] if vectors else None)


def make_batch(student: ModelOutputs, teachers: list[ModelOutputs], indices: Tensor | None = None) -> DistillBatch:
    batch_size = student.logits.shape[0]
    return DistillBatch(
        student=student,
        teachers=teachers,
        targets=torch.zeros(batch_size, dtype=torch.long),
        images=torch.zeros(batch_size, 3, 2, 2),
        indices=torch.arange(batch_size) if indices is None else indices,
    )


class FeatureRun:
    """A loss set up on fixed features; ``__call__`` evaluates it (optionally on new tensors)."""

    def __init__(self, loss: Loss, student: dict[str, Tensor], teachers: list[dict[str, Tensor]], teacher_modules, num_samples: int):
        self.loss = loss
        self.student, self.teachers = student, teachers
        self.student_net = feature_network(student)
        self.teacher_nets = [feature_network(t, teacher_modules) for t in teachers]
        context = SetupContext(
            student_shapes={k: v.shape for k, v in student.items()},
            teacher_shapes=[{k: v.shape for k, v in t.items()} for t in teachers],
            student=self.student_net,
            teachers=self.teacher_nets,
            num_classes=3,
            num_samples=num_samples,
        )
        loss.setup(context)

    def outputs(self, student=None, teachers=None) -> tuple[ModelOutputs, list[ModelOutputs]]:
        student = student or self.student
        teachers = teachers or self.teachers
        batch_size = next(iter(student.values())).shape[0]
        logits = torch.zeros(batch_size, 3)
        return ModelOutputs(logits, dict(student)), [ModelOutputs(logits, dict(t)) for t in teachers]

    def batch(self, student=None, teachers=None, indices=None) -> DistillBatch:
        s, ts = self.outputs(student, teachers)
        return make_batch(s, ts, indices)

    def __call__(self, student=None, teachers=None, indices=None) -> Tensor:
        return self.loss(self.batch(student, teachers, indices))

    def modules(self, teacher_index: int = 0) -> nn.Module:
        return self.loss.per_teacher[teacher_index]


def tiny_cnn(widths: tuple[int, int], second_stride: int = 2, num_classes: int = 5) -> Network:
    """Two stages, each ``Sequential(conv, BN)`` followed by a ReLU: stage taps are pre-activation."""
    first, second = widths
    body = nn.Sequential(
        OrderedDict(
            stem=nn.Conv2d(3, first, 3, padding=1),
            stage1=nn.Sequential(nn.Conv2d(first, first, 3, padding=1), nn.BatchNorm2d(first)),
            relu1=nn.ReLU(),
            stage2=nn.Sequential(nn.Conv2d(first, second, 3, stride=second_stride, padding=1), nn.BatchNorm2d(second)),
            relu2=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(second, num_classes),
        )
    )
    return Network(body, num_classes=num_classes, stages=["stage1", "stage2"], embedding="pool")


def capture(net: Network, paths: list[str], images: Tensor) -> ModelOutputs:
    """Run ``net`` with forward hooks on ``paths`` (what the core does for taps)."""
    features: dict[str, Tensor] = {}
    hooks = [
        net.submodule(path).register_forward_hook(lambda module, args, output, path=path: features.__setitem__(path, output))
        for path in paths
    ]
    try:
        logits = net(images)
    finally:
        for hook in hooks:
            hook.remove()
    return ModelOutputs(logits, features)


class NetworkRun:
    """A loss set up on real tiny networks through taps + forward hooks."""

    def __init__(self, loss: Loss, student: Network, teachers: list[Network], images: Tensor, num_samples: int = 16):
        self.loss, self.student, self.teachers, self.images = loss, student, teachers, images
        self.taps = [loss.taps(student, teacher) for teacher in teachers]
        student_out, teacher_outs = self.forward()
        context = SetupContext(
            student_shapes={k: v.shape for k, v in student_out.features.items()},
            teacher_shapes=[{k: v.shape for k, v in out.features.items()} for out in teacher_outs],
            student=student,
            teachers=teachers,
            num_classes=student.num_classes,
            num_samples=num_samples,
        )
        loss.setup(context)

    def forward(self) -> tuple[ModelOutputs, list[ModelOutputs]]:
        student_paths = sorted({path for paths, _ in self.taps for path in paths})
        student_out = capture(self.student, student_paths, self.images)
        with torch.no_grad():  # teacher outputs arrive detached
            teacher_outs = [capture(t, paths, self.images) for t, (_, paths) in zip(self.teachers, self.taps)]
        return student_out, teacher_outs

    def batch(self) -> DistillBatch:
        student_out, teacher_outs = self.forward()
        return make_batch(student_out, teacher_outs)


@pytest.fixture
def harness(host):
    def build(name: str, params: dict | None = None) -> Loss:
        return host.registry.build("loss", name, params or {})

    def on_features(name, student, teachers, params=None, teacher_modules=None, num_samples=8) -> FeatureRun:
        return FeatureRun(build(name, params), student, teachers, teacher_modules, num_samples)

    def on_networks(name, student, teachers, images, params=None, num_samples=16) -> NetworkRun:
        return NetworkRun(build(name, params), student, teachers, images, num_samples)

    return SimpleNamespace(build=build, on_features=on_features, on_networks=on_networks, tiny_cnn=tiny_cnn)


# --------------------------------------------------------------------------- known connector weights
def set_identity_conv_connector(connector: nn.Module) -> None:
    """Make a kdzoo.api.connectors.ConvConnector (square 1x1 conv + BN) compute the identity in eval mode."""
    channels = connector.conv.weight.shape[0]
    with torch.no_grad():
        connector.conv.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
        connector.bn.running_mean.zero_()
        connector.bn.running_var.fill_(1.0 - connector.bn.eps)  # (x - 0) / sqrt(var + eps) == x
        connector.bn.weight.fill_(1.0)
        connector.bn.bias.zero_()
    connector.eval()


def set_eval_bn_identity(norm: nn.BatchNorm2d) -> None:
    with torch.no_grad():
        norm.running_mean.zero_()
        norm.running_var.fill_(1.0 - norm.eps)
        norm.weight.fill_(1.0)
        norm.bias.zero_()
    norm.eval()


@pytest.fixture
def known():
    return SimpleNamespace(identity_conv=set_identity_conv_connector, identity_bn=set_eval_bn_identity)
