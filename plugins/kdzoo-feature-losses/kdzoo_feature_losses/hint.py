"""Direct feature regression: FitNets hints and SimKD's projector alignment."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.api import SetupContext
from kdzoo.api.connectors import as_feature_map, feature_map_shape, make_connector
from kdzoo_feature_losses import FitNetParams, SimKDParams
from kdzoo_feature_losses._base import LayerPair, LayerwiseLoss, describe_shape
from kdzoo_feature_losses._math import pool_to_common_size


class FitNetLoss(LayerwiseLoss):
    """FitNets hint loss: ``MSE(r(student hint), teacher hint)``.

    Romero, Ballas, Kahou, Chassang, Gatta & Bengio (2015), "FitNets: Hints for Thin
    Deep Nets", ICLR 2015, arXiv:1412.6550.

    The regressor ``r`` is a conv (1x1 by default, or 3x3) + BatchNorm connector with a
    bilinear resize to the teacher's spatial size; ``(B, D)`` embeddings use a linear
    regressor. Token maps are laid out on their grid.

    Simplifications: the paper's ``1/2 ||u_h - r(v_g)||^2`` is averaged over elements
    (MSE: a constant factor), the paper's regressor is a plain conv sized to match the
    hint, and the paper's two-stage schedule (hint pre-training of the lower layers,
    then KD) is replaced by adding this term to the training objective, as is standard
    in KD benchmarks. Several layer pairs (explicit lists) are averaged.
    """

    loss_name = "fitnet"
    params_model = FitNetParams
    default_taps = "last_stage"
    feature_kind = "any"  # maps, tokens (as maps) or embeddings

    def _converted_shape(self, shapes: dict[str, torch.Size], path: str, role: str) -> torch.Size:
        shape = super()._converted_shape(shapes, path, role)
        if len(shape) == 2:
            return shape
        try:
            return feature_map_shape(shape)
        except ValueError as exc:
            raise ValueError(f"fitnet: {role} layer '{path}' with shape {describe_shape(shape)} is unusable: {exc}") from None

    def _convert(self, x: Tensor) -> Tensor:
        return (x if x.ndim == 2 else as_feature_map(x)).float()

    def build_layer(self, pair: LayerPair, context: SetupContext, teacher_index: int) -> nn.Module:
        vectors = (len(pair.student_shape) == 2, len(pair.teacher_shape) == 2)
        if vectors[0] != vectors[1]:
            raise ValueError(
                f"fitnet: cannot regress student layer '{pair.student_path}' {describe_shape(pair.student_shape)} "
                f"onto teacher layer '{pair.teacher_path}' {describe_shape(pair.teacher_shape)}: one is a map, one a vector"
            )
        kind = self.params.connector
        if vectors[0] and kind != "auto":
            kind = "linear"
        return make_connector(kind, pair.student_shape, pair.teacher_shape)

    def layer_loss(self, student: Tensor, teacher: Tensor, module: nn.Module) -> Tensor:
        return F.mse_loss(module(student).float(), teacher)


class SimKDProjector(nn.Module):
    """SimKD's projector: 1x1 conv -> 3x3 conv -> 1x1 conv (BN + ReLU after each), with a
    ``teacher_channels / factor`` bottleneck."""

    def __init__(self, student_channels: int, teacher_channels: int, factor: int):
        super().__init__()
        hidden = max(1, teacher_channels // factor)
        self.layers = nn.Sequential(
            nn.Conv2d(student_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, teacher_channels, 1, bias=False),
            nn.BatchNorm2d(teacher_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class SimKDLoss(LayerwiseLoss):
    """SimKD feature alignment: ``MSE(P(student feature), teacher feature)``.

    Chen, Mei, Zhang, Wang, Feng & Chen (2022), "Knowledge Distillation with the Reused
    Teacher Classifier", CVPR 2022, arXiv:2203.14001.

    ``P`` is the paper's projector (1x1, 3x3, 1x1 convs with BN + ReLU, bottleneck
    ``teacher_channels / projector_factor``). When the spatial sizes differ, the larger
    map is average-pooled to the smaller one first, as in the authors' code.

    Not included: SimKD also *reuses the teacher's classifier* on the projected student
    feature at inference (the deployed student is student + projector + teacher head).
    kdzoo trains only this feature-alignment term; the student keeps its own head, so
    pair it with a label loss for the head.
    """

    loss_name = "simkd"
    params_model = SimKDParams
    default_taps = "last_stage"
    feature_kind = "map"

    def build_layer(self, pair: LayerPair, context: SetupContext, teacher_index: int) -> nn.Module:
        return SimKDProjector(pair.student_shape[1], pair.teacher_shape[1], self.params.projector_factor)

    def layer_loss(self, student: Tensor, teacher: Tensor, module: nn.Module) -> Tensor:
        student, teacher = pool_to_common_size(student, teacher)
        return F.mse_loss(module(student).float(), teacher)

