"""Plumbing shared by the feature losses: which layers to tap, per-teacher connectors, fp32 inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from kdzoo.api import DistillBatch, Loss, ModelOutputs, Network, SetupContext
from kdzoo.api.connectors import as_embedding, as_feature_map, embedding_shape, feature_map_shape
from kdzoo_feature_losses._math import resize_to

#: "second_stage": the second declared stage (the last when only one is declared), where
#: RepDistiller / mdistiller place FitNets' hint (their ``hint_layer = 2``, counting the stem)
DefaultTaps = Literal["second_stage", "last_stage", "all_stages", "all_stages_pre_activation", "embedding"]
FeatureKind = Literal["map", "embedding", "any"]


@dataclass(frozen=True)
class LayerPair:
    """One student layer compared with one teacher layer; shapes are after conversion
    (``feature_kind``) and include the batch dimension."""

    student_path: str
    teacher_path: str
    student_shape: torch.Size
    teacher_shape: torch.Size


def describe_shape(shape: Any) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def map_shape(loss_name: str, shape: torch.Size, path: str, role: str) -> torch.Size:
    """``(B, C, H, W)`` of a tapped feature map (a square token map counts), or an error
    naming the loss, the layer and its shape."""
    try:
        return feature_map_shape(shape)
    except ValueError as exc:
        raise ValueError(
            f"{loss_name} needs a spatial feature map (B, C, H, W) or a square token map at "
            f"{role} layer '{path}', which has shape {describe_shape(shape)}: {exc}"
        ) from None


class TappedLoss(Loss):
    """A distillation loss over tapped features, computed per teacher.

    Subclasses set ``params_model``, ``default_taps`` and ``feature_kind``, build their
    trainable modules for one teacher in ``build`` and compare features in ``compare``.
    Features reach ``compare`` converted (maps / embeddings), in fp32, and the teacher's
    detached (even if a caller forgot to), in the order of ``layer_pairs``.
    """

    loss_name: ClassVar[str] = "feature loss"
    params_model: ClassVar[type[BaseModel]]
    #: layers tapped when params leave student_layers / teacher_layers unset
    default_taps: ClassVar[DefaultTaps] = "last_stage"
    #: "map": (B, C, H, W) (token maps are laid out on their grid); "embedding": (B, D); "any": as tapped
    feature_kind: ClassVar[FeatureKind] = "map"
    #: methods relating consecutive layers need at least two
    min_layers: ClassVar[int] = 1

    def __init__(self, params: BaseModel | None = None):
        super().__init__(params if params is not None else self.params_model())
        self.layer_pairs: list[list[LayerPair]] = []  # per teacher; rebuilt by setup
        self.per_teacher = nn.ModuleList()  # per teacher: the method's trainable modules

    # ------------------------------------------------------------------ taps
    def _declared_layers(self, net: Network, role: str) -> list[str]:
        if self.default_taps == "embedding":
            if not net.embedding:
                raise ValueError(f"{self.loss_name}: the {role} network declares no embedding tap; set {role}_layers")
            return [net.embedding]
        if not net.stages:
            raise ValueError(f"{self.loss_name}: the {role} network declares no stages; set {role}_layers")
        if self.default_taps == "all_stages":
            return list(net.stages)
        if self.default_taps == "all_stages_pre_activation":  # the stages themselves where a network declares none
            return list(net.pre_activation_stages or net.stages)
        if self.default_taps == "second_stage":
            return [net.stages[min(1, len(net.stages) - 1)]]
        return [net.stages[-1]]

    def _check_paths(self, net: Network, paths: list[str], role: str) -> None:
        for path in paths:
            try:
                net.submodule(path)
            except AttributeError:
                raise ValueError(f"{self.loss_name}: {role} has no module '{path}' to tap") from None

    def taps(self, student: Network, teacher: Network | None) -> tuple[list[str], list[str]]:
        explicit_student = self.params.student_layers
        student_layers = list(explicit_student) if explicit_student else self._declared_layers(student, "student")
        self._check_paths(student, student_layers, "student")
        if teacher is None:
            return student_layers, []
        explicit_teacher = self.params.teacher_layers
        teacher_layers = list(explicit_teacher) if explicit_teacher else self._declared_layers(teacher, "teacher")
        self._check_paths(teacher, teacher_layers, "teacher")
        if len(student_layers) != len(teacher_layers):
            if explicit_student or explicit_teacher:
                raise ValueError(
                    f"{self.loss_name}: student_layers ({len(student_layers)}) and teacher_layers "
                    f"({len(teacher_layers)}) must pair up one to one"
                )
            # Declared stages of networks of different depth: pair the deepest ones.
            count = min(len(student_layers), len(teacher_layers))
            student_layers, teacher_layers = student_layers[-count:], teacher_layers[-count:]
        if len(student_layers) < self.min_layers:
            raise ValueError(f"{self.loss_name} needs at least {self.min_layers} layer pairs, got {len(student_layers)}")
        return student_layers, teacher_layers

    # ------------------------------------------------------------------ setup
    def _converted_shape(self, shapes: dict[str, torch.Size], path: str, role: str) -> torch.Size:
        if path not in shapes:
            raise ValueError(f"{self.loss_name}: no recorded shape for {role} tap '{path}'")
        shape = shapes[path]
        if self.feature_kind == "any":
            return torch.Size(shape)
        if self.feature_kind == "embedding":
            return embedding_shape(shape)
        return map_shape(self.loss_name, shape, path, role)

    def setup(self, context: SetupContext) -> None:
        if not context.teachers:
            raise ValueError(f"{self.loss_name} needs at least one teacher")
        self.layer_pairs = []
        modules = []
        for index, teacher in enumerate(context.teachers):
            student_paths, teacher_paths = self.taps(context.student, teacher)
            pairs = [
                LayerPair(
                    s,
                    t,
                    self._converted_shape(context.student_shapes, s, "student"),
                    self._converted_shape(context.teacher_shapes[index], t, f"teacher {index}"),
                )
                for s, t in zip(student_paths, teacher_paths)
            ]
            self.layer_pairs.append(pairs)
            modules.append(self.build(pairs, context, index))
        device = next(context.student.parameters(), torch.empty(0)).device
        self.per_teacher = nn.ModuleList(modules).to(device)

    def build(self, pairs: list[LayerPair], context: SetupContext, teacher_index: int) -> nn.Module:
        """The trainable modules for one teacher (connectors, heads, memory banks)."""
        return nn.Identity()

    # ------------------------------------------------------------------ forward
    def _convert(self, x: Tensor) -> Tensor:
        if self.feature_kind == "map":
            x = as_feature_map(x)
        elif self.feature_kind == "embedding":
            x = as_embedding(x)
        return x.float()

    def _features(self, outputs: ModelOutputs, paths: list[str], role: str) -> list[Tensor]:
        missing = [p for p in paths if p not in outputs.features]
        if missing:
            raise KeyError(f"{self.loss_name}: {role} outputs lack tapped features {missing}")
        return [self._convert(outputs.features[p]) for p in paths]

    def pair(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: DistillBatch, teacher_index: int) -> Tensor:
        if teacher_index >= len(self.layer_pairs):
            raise RuntimeError(f"{self.loss_name}: setup() has not been run for teacher {teacher_index}")
        pairs = self.layer_pairs[teacher_index]
        student_features = self._features(student, [p.student_path for p in pairs], "student")
        teacher_features = [f.detach() for f in self._features(teacher, [p.teacher_path for p in pairs], "teacher")]
        # Losses (Gram matrices, exp(./T), SVD) run in fp32 even inside an autocast region.
        with torch.autocast(device_type=student_features[0].device.type, enabled=False):
            return self.compare(student_features, teacher_features, self.per_teacher[teacher_index], batch)

    def compare(self, student: list[Tensor], teacher: list[Tensor], modules: nn.Module, batch: DistillBatch) -> Tensor:
        raise NotImplementedError


class LayerwiseLoss(TappedLoss):
    """A loss whose layer pairs are compared independently, then combined with ``layer_weights``
    (default: equal weights averaging the layers; losses whose reference code sums layers, or
    weights them, override it)."""

    def build(self, pairs: list[LayerPair], context: SetupContext, teacher_index: int) -> nn.Module:
        return nn.ModuleList([self.build_layer(pair, context, teacher_index) for pair in pairs])

    def build_layer(self, pair: LayerPair, context: SetupContext, teacher_index: int) -> nn.Module:
        """The trainable module of one layer pair (``nn.Identity`` when the method has none)."""
        return nn.Identity()

    def layer_weights(self, count: int) -> list[float]:
        """Weights of the ``count`` layer losses, shallow to deep, in the order of ``layer_pairs``."""
        return [1.0 / count] * count

    def compare(self, student: list[Tensor], teacher: list[Tensor], modules: nn.Module, batch: DistillBatch) -> Tensor:
        losses = [self.layer_loss(s, t, module) for s, t, module in zip(student, teacher, modules)]
        # Python floats times tensors: no host-to-device copy of the weights each step.
        return torch.stack([weight * loss for weight, loss in zip(self.layer_weights(len(losses)), losses)]).sum()

    def layer_loss(self, student: Tensor, teacher: Tensor, module: nn.Module) -> Tensor:
        raise NotImplementedError


class PlainAligner(nn.Module):
    """The student-side ``align`` of MGD's and CWD's references: a 1x1 conv with bias and no
    norm, only when the channel counts differ (identity otherwise), then a bilinear resize to
    the teacher's spatial size when that differs (the references require equal sizes)."""

    def __init__(self, student_channels: int, teacher_channels: int, output_size: tuple[int, int]):
        super().__init__()
        if student_channels == teacher_channels:
            self.align: nn.Module = nn.Identity()
        else:
            self.align = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
        self.output_size = output_size

    def forward(self, student: Tensor) -> Tensor:
        return resize_to(self.align(student), self.output_size)
