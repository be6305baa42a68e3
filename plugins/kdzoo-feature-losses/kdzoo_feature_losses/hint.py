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

    Follows RepDistiller ``distiller_zoo/FitNet.py`` + ``models/util.py:ConvReg`` (and
    mdistiller ``FitNet.py`` + ``_common.py:ConvReg``): the regressor ``r`` is conv + BN
    + ReLU (``relu``), the loss the element-mean MSE, and the hint is the **second**
    stage (their ``hint_layer = 2`` counts the stem as layer 0: the middle stage of a
    3-stage CIFAR ResNet). Published weight: 100 (RepDistiller ``-b 100``, mdistiller
    ``FITNET.LOSS.FEAT_WEIGHT``).

    Here the conv is 1x1 (default) or 3x3 followed by a bilinear resize to the teacher's
    spatial size where the references pick a strided / transposed / valid conv by the
    size ratio (the same 1x1 conv when sizes match, the usual CIFAR case). ``(B, D)``
    embeddings use a linear regressor (+ ReLU, like RepDistiller's ``Regress``). Token
    maps are laid out on their grid. With ``connector: auto`` and matching shapes there
    is no regressor and no ReLU.

    Simplifications: the paper's ``1/2 ||u_h - r(v_g)||^2`` is the element mean here (a
    constant factor, as in both references), and the paper's two-stage schedule (hint
    pre-training, then KD) is replaced by adding this term to the objective, as the
    references do. Several layer pairs (explicit lists) are averaged.
    """

    loss_name = "fitnet"
    params_model = FitNetParams
    default_taps = "second_stage"
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
        regressor = make_connector(kind, pair.student_shape, pair.teacher_shape)
        if self.params.relu and not isinstance(regressor, nn.Identity):
            regressor = nn.Sequential(regressor, nn.ReLU())
        return regressor

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

