"""Test helpers for plugin authors (and for ``kdzoo plugins check``, which uses the same ones).

Import what you need in your plugin's tests::

    from kdzoo.testing import isolated_host, make_distill_batch, tiny_network_pair

Everything here is small and seeded: a distillation step on the tiny networks takes a
few milliseconds on a CPU. Seeds are local (``torch.random.fork_rng``), so calling a
helper never changes the global random state of the test that calls it.
"""

from __future__ import annotations

import copy
import importlib
import types
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kdzoo.api import CamHead, DistillBatch, EvalBatch, Loss, Metric, ModelOutputs, Network, SetupContext, ViewOutputs
from kdzoo.host.loading import PluginHost, PluginInfo, new_manager, register_plugin
from kdzoo.host.registry import Registry
from kdzoo.api.taps import tapped

NUM_CLASSES = 10
IMAGE_SIZE = 32
BATCH_SIZE = 8

__all__ = [
    "BATCH_SIZE",
    "IMAGE_SIZE",
    "NUM_CLASSES",
    "TinyCNN",
    "isolated_host",
    "logits_batch",
    "make_distill_batch",
    "make_eval_batch",
    "random_features",
    "random_images",
    "random_logits",
    "random_masks",
    "tiny_network",
    "tiny_network_pair",
    "tiny_spec",
]


# ----------------------------------------------------------------------------- networks
def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=False),  # not in place: a tapped output must not change after the hook saw it
    )


class TinyCNN(nn.Module):
    """A 2-stage CNN laid out like the CIFAR ResNets (``layer1``, ``layer2``, ``avgpool``, ``fc``).

    For 32x32 inputs ``layer1`` gives ``(B, width, 32, 32)``, ``layer2``
    ``(B, 2 * width, 16, 16)`` and ``avgpool`` ``(B, 2 * width, 1, 1)``.
    """

    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.stem = _conv_bn_relu(3, width, stride=1)
        self.layer1 = _conv_bn_relu(width, width, stride=1)
        self.layer2 = _conv_bn_relu(width, 2 * width, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def tiny_network(width: int = 4, num_classes: int = NUM_CLASSES, seed: int = 0) -> Network:
    """A :class:`TinyCNN` wrapped in :class:`kdzoo.api.Network` with every tap declared."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        body = TinyCNN(width, num_classes)
    return Network(
        body,
        num_classes=num_classes,
        stages=["layer1", "layer2"],
        embedding="avgpool",
        cam=CamHead(features="layer2", classifier="fc"),
        family="cnn",
    )


def tiny_network_pair(num_classes: int = NUM_CLASSES, seed: int = 0) -> tuple[Network, Network]:
    """``(student, teacher)``: the teacher is twice as wide, so feature losses need connectors."""
    return tiny_network(4, num_classes, seed), tiny_network(8, num_classes, seed + 1)


# ----------------------------------------------------------------------------- tensors
def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_images(batch_size: int = BATCH_SIZE, image_size: int = IMAGE_SIZE, seed: int = 0) -> Tensor:
    """A uint8 ``(B, 3, H, W)`` batch, as datasets store images and augmentations receive them."""
    return torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8, generator=_generator(seed))


def random_logits(batch_size: int = BATCH_SIZE, num_classes: int = NUM_CLASSES, seed: int = 0, scale: float = 3.0) -> Tensor:
    """Float ``(B, num_classes)`` logits with a realistic spread (``scale`` is their std)."""
    return torch.randn(batch_size, num_classes, generator=_generator(seed)) * scale


def random_features(
    batch_size: int = BATCH_SIZE, channels: int = 16, size: int | None = 8, seed: int = 0
) -> Tensor:
    """Post-ReLU-like feature maps ``(B, C, size, size)``, or embeddings ``(B, C)`` when ``size`` is None."""
    shape = (batch_size, channels) if size is None else (batch_size, channels, size, size)
    return torch.randn(*shape, generator=_generator(seed)).relu()


def random_masks(batch_size: int = BATCH_SIZE, image_size: int = IMAGE_SIZE, seed: int = 0) -> Tensor:
    """Bool ``(B, H, W)`` object masks: one random axis-aligned box per image."""
    generator = _generator(seed)
    masks = torch.zeros(batch_size, image_size, image_size, dtype=torch.bool)
    for mask in masks:
        top, left = torch.randint(0, image_size // 2, (2,), generator=generator).tolist()
        side = int(torch.randint(image_size // 4, image_size // 2 + 1, (1,), generator=generator))
        mask[top : top + side, left : left + side] = True
    return masks


# ----------------------------------------------------------------------------- losses
def _forward_with_taps(network: Network, images: Tensor, paths: Sequence[str], raw: bool = False) -> tuple[Tensor, dict[str, Any]]:
    with tapped(network, paths, raw=raw) as features:
        logits = network(images)
    return logits, dict(features)


def _as_grad_leaf(tensor: Tensor) -> Tensor:
    return tensor.detach().clone().requires_grad_(tensor.is_floating_point())


def make_distill_batch(
    loss: Loss,
    student: Network,
    teachers: Network | Sequence[Network] = (),
    *,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    num_samples: int = 64,
    epoch: int = 0,
    epochs: int = 1,
    step: int = 0,
    steps: int = 1,
    setup: bool = True,
    teacher_requires_grad: bool = False,
) -> DistillBatch:
    """One training step's :class:`kdzoo.api.DistillBatch`, prepared the way the engine does it.

    A loss with ``uses_peers`` gets one peer student (``batch.peers["peer"]``): a copy of
    ``student`` with perturbed weights, run on the same images without gradients. A loss
    that asks for further views (``Loss.views``) gets each in ``batch.views``: other
    random images stand in for the view's augmentation (``images`` requiring grad, as the
    batch's), run through the teachers (as the batch's) and the student (with gradient).

    Asks ``loss.taps`` for module paths, runs ``loss.setup`` with the tapped shapes
    (skip with ``setup=False`` for later steps), freezes the teachers and runs them
    without gradients, then runs the student (train mode) with gradients.

    ``batch.images`` requires grad, so a test can check that the loss reaches the
    student: ``loss(batch).backward(); assert batch.images.grad is not None``. With
    ``teacher_requires_grad=True`` the teachers' logits and features are leaf tensors
    that require grad, as when a caller forgets to detach them: a loss must still not
    send gradient into them (``kdzoo plugins check`` tests exactly that).
    """
    teacher_list = [teachers] if isinstance(teachers, Network) else list(teachers)
    num_classes = student.num_classes
    images = random_images(batch_size, IMAGE_SIZE, seed).float().div_(255).requires_grad_(True)
    targets = torch.randint(0, num_classes, (batch_size,), generator=_generator(seed + 1))

    student_paths: list[str] = []
    teacher_paths: list[list[str]] = [[] for _ in teacher_list]
    for index, teacher in enumerate(teacher_list or [None]):
        s_paths, t_paths = loss.taps(student, teacher)
        student_paths += s_paths
        if teacher is not None:
            teacher_paths[index] += t_paths
    student_paths = list(dict.fromkeys(student_paths))

    student.train()
    for teacher in teacher_list:
        teacher.eval().requires_grad_(False)
    teacher_outputs = []
    with torch.no_grad():
        for teacher, paths in zip(teacher_list, teacher_paths, strict=True):
            logits, features = _forward_with_taps(teacher, images.detach(), paths)
            teacher_outputs.append(ModelOutputs(logits, features))
        if setup:
            _, student_features = _forward_with_taps(student, images.detach(), student_paths)
    if setup:
        loss.setup(
            SetupContext(
                student_shapes={path: t.shape for path, t in student_features.items()},
                teacher_shapes=[{path: t.shape for path, t in out.features.items()} for out in teacher_outputs],
                student=student,
                teachers=teacher_list,
                num_classes=num_classes,
                num_samples=num_samples,
                epochs=epochs,
                steps=steps,
            )
        )
    if teacher_requires_grad:
        teacher_outputs = [
            ModelOutputs(_as_grad_leaf(out.logits), {path: _as_grad_leaf(t) for path, t in out.features.items()})
            for out in teacher_outputs
        ]
    peers = {}
    if getattr(loss, "uses_peers", False):  # another student of the same pass: a perturbed copy, detached
        peer = copy.deepcopy(student)
        with torch.no_grad():
            noise = _generator(seed + 3)
            for parameter in peer.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=noise) * 0.1)
            peer_logits, peer_features = _forward_with_taps(peer, images.detach(), student_paths)
        peers["peer"] = ModelOutputs(peer_logits, peer_features)
    logits, features = _forward_with_taps(student, images, student_paths)
    views = {}
    for offset, (name, request) in enumerate(loss.views().items()):
        view_images = random_images(batch_size, IMAGE_SIZE, seed + 10 + offset).float().div_(255).requires_grad_(True)
        with torch.no_grad():
            view_teachers = [ModelOutputs(*_forward_with_taps(t, view_images.detach(), paths)) for t, paths in zip(teacher_list, teacher_paths)]
        if teacher_requires_grad:
            view_teachers = [ModelOutputs(_as_grad_leaf(o.logits), {k: _as_grad_leaf(v) for k, v in o.features.items()}) for o in view_teachers]
        views[name] = ViewOutputs(view_images, ModelOutputs(*_forward_with_taps(student, view_images, student_paths)), view_teachers)
    return DistillBatch(
        student=ModelOutputs(logits, features),
        teachers=teacher_outputs,
        targets=targets,
        images=images,
        indices=torch.randperm(num_samples, generator=_generator(seed + 2))[:batch_size],
        epoch=epoch,
        epochs=epochs,
        step=step,
        steps=steps,
        peers=peers,
        views=views,
    )


def logits_batch(student: Tensor, teachers: Sequence[Tensor] = (), targets: Tensor | None = None, *, epoch: int = 0,
                 epochs: int = 1, peers: dict[str, Tensor] | None = None,
                 views: dict[str, tuple[Tensor, Sequence[Tensor]]] | None = None) -> DistillBatch:
    """A :class:`kdzoo.api.DistillBatch` of given logits only, for testing a logit loss
    against its formula: ``student`` ``(B, C)``, one ``(B, C)`` per teacher, ``targets``
    (default zeros), placeholder images and indices; ``peers``: name -> logits;
    ``views``: name -> (the student's logits, the teachers' logits) on that view."""
    n = student.shape[0]
    return DistillBatch(
        student=ModelOutputs(student),
        teachers=[ModelOutputs(t) for t in teachers],
        targets=torch.zeros(n, dtype=torch.long) if targets is None else targets,
        images=torch.zeros(n, 3, 4, 4),
        indices=torch.arange(n),
        epoch=epoch,
        epochs=epochs,
        peers={name: ModelOutputs(p) for name, p in (peers or {}).items()},
        views={name: ViewOutputs(torch.zeros(n, 3, 4, 4), ModelOutputs(s), [ModelOutputs(t) for t in ts])
               for name, (s, ts) in (views or {}).items()},
    )


# ----------------------------------------------------------------------------- metrics
def make_eval_batch(
    metric: Metric,
    networks: dict[str, Network],
    *,
    teachers: Sequence[str] = (),
    student: str | None = None,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    masks: bool = True,
) -> EvalBatch:
    """An :class:`kdzoo.api.EvalBatch` as the engine's evaluation builds it: every network
    in eval mode on the same images, without gradients, with the taps ``metric`` asks for
    (raw module outputs). ``masks=True`` adds random box masks."""
    taps = metric.taps(networks)
    images = random_images(batch_size, IMAGE_SIZE, seed).float().div_(255)
    logits: dict[str, Tensor] = {}
    features: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        for role, network in networks.items():
            network.eval()
            logits[role], features[role] = _forward_with_taps(network, images, taps.get(role, []), raw=True)
    num_classes = next(iter(logits.values())).shape[1] if logits else NUM_CLASSES
    return EvalBatch(
        logits=logits,
        features=features,
        targets=torch.randint(0, num_classes, (batch_size,), generator=_generator(seed + 1)),
        images=images,
        networks=networks,
        masks=random_masks(batch_size, IMAGE_SIZE, seed) if masks else None,
        teachers=tuple(teachers),
        student=student,
    )


# ----------------------------------------------------------------------------- plugins
def isolated_host(*modules: types.ModuleType | str) -> PluginHost:
    """A plugin host holding only ``modules`` (hook modules or their import names).

    Loads them as kdzoo loads installed plugins (API check, hook validation, component
    registration), without the entry points of whatever else is installed, so a test
    sees only the plugin under test::

        host = isolated_host("my_plugin")
        loss = host.registry.build("loss", "my-loss", {"temperature": 2.0})
    """
    host = PluginHost(new_manager(), Registry())
    for module in modules:
        if isinstance(module, str):
            module = importlib.import_module(module)
        register_plugin(host, module, PluginInfo(name=module.__name__, module=module.__name__))
    return host


# ----------------------------------------------------------------------------- specs
_TINY_DISTILL_SPEC: dict[str, Any] = {
    "kind": "distill",
    "name": "tiny-distill",
    "seed": 0,
    "epochs": 1,
    "batch_size": 32,
    "precision": "fp32",
    "threads": 1,
    "data": {"name": "synthetic-shapes", "params": {"train_size": 64, "test_size": 32, "num_classes": 4}},
    "student": {"model": {"name": "cifar-resnet", "params": {"depth": 8, "width": 4}}},
    "teachers": [{"name": "t1", "train": {"model": {"name": "cifar-resnet", "params": {"depth": 8, "width": 4}}, "epochs": 1}}],
    "losses": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5}],
}


def tiny_spec(**overrides: Any) -> dict[str, Any]:
    """A distill spec (as a dict) that runs end to end in seconds on a CPU.

    Top-level keys in ``overrides`` replace the defaults, e.g. to try your loss::

        spec = tiny_spec(losses=[{"name": "ce", "weight": 0.5}, {"name": "my-loss", "weight": 0.5}])
        Path("spec.yaml").write_text(yaml.safe_dump(spec))  # then: kdzoo run spec.yaml --out runs/try
    """
    spec = copy.deepcopy(_TINY_DISTILL_SPEC)
    spec.update(copy.deepcopy(overrides))
    return spec
