"""Losses on pre-activation features around the ReLU boundary: activation boundaries and OFD."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.api import Network, SetupContext
from kdzoo.api.connectors import make_connector
from kdzoo_feature_losses import ABParams, OFDParams
from kdzoo_feature_losses._base import LayerPair, LayerwiseLoss
from kdzoo_feature_losses._math import gaussian_negative_margin


class ActivationBoundaryLoss(LayerwiseLoss):
    """Activation-boundary transfer: the student's pre-activations must fall on the same side
    of zero as the teacher's, by a margin.

    Heo, Lee, Yun & Choi (2019), "Knowledge Transfer via Distillation of Activation
    Boundaries Formed by Hidden Neurons", AAAI 2019, arXiv:1811.03233.

    Per layer ``|| rho(T) * relu(mu - r(S))  +  (1 - rho(T)) * relu(mu + r(S)) ||_2^2`` with
    ``rho(T) = 1[T > 0]``, margin ``mu = 1``, ``r`` a 1x1 conv + BN connector (resized
    to the teacher's spatial size): the squared hinge summed over neurons, averaged over
    the batch.

    ``convention: reference`` (default) follows RepDistiller ``distiller_zoo/AB.py`` (from
    the authors' code): layer ``i`` of ``n`` (shallow to deep) weighted ``2^(i - n + 1)``
    (the deepest 1, halving towards the input), summed, times **3/1000**. Published
    weight: 1. ``convention: paper``: the per-layer squared hinges summed with equal weights.

    Stage ``init`` (``stages:`` of the spec): RepDistiller uses AB only to initialise the
    student (``train_student.py`` calls ``helper/pretrain.py:init`` for ``--distill
    abound``): 30 epochs (``init_epochs``) of this loss alone, SGD over the connectors and
    the student's feature layers (not its classifier: with the loss alone it gets no
    gradient) at the run's lr 0.05, momentum 0.9, weight decay 5e-4, a constant lr; the
    main training then computes no AB term (its ``loss_kd`` is 0 for ``abound``) and leaves
    the connectors untrained: a stage ``init`` with ``ce`` at weight 0, then a stage with
    ``ab`` at weight 0. In a run with stages, ``ab`` takes part only in stages named
    ``init``; the loss itself is the same in every stage. Without stages it is simply
    added to the objective.

    Taps: by default every stage's *pre-activation* output (the network's
    ``pre_activation_stages``: for cifar-resnet the last block's residual sum before its
    ReLU), as RepDistiller taps ``feat[1:-1]`` with ``preact=True``; a network that
    declares none is tapped at its stages (post-ReLU, where the teacher's sign degenerates
    to "positive vs. zero"). RepDistiller skips the connector where shapes already match;
    here it is always there.
    """

    loss_name = "ab"
    params_model = ABParams
    default_taps = "all_stages_pre_activation"
    feature_kind = "map"
    stages = ("init",)

    def layer_weights(self, count: int) -> list[float]:
        if self.params.convention == "paper":
            return [1.0] * count
        return [2.0 ** (i - count + 1) * 3 / 1000 for i in range(count)]

    def build_layer(self, pair: LayerPair, context: SetupContext, teacher_index: int) -> nn.Module:
        return make_connector("conv1x1", pair.student_shape, pair.teacher_shape)

    def layer_loss(self, student: Tensor, teacher: Tensor, module: nn.Module) -> Tensor:
        response = module(student).float()
        margin = self.params.margin
        active = (teacher > 0).float()
        hinge = active * F.relu(margin - response).pow(2) + (1 - active) * F.relu(margin + response).pow(2)
        return hinge.flatten(1).sum(dim=1).mean()


def batchnorm_producing(net: Network, path: str, channels: int) -> nn.BatchNorm2d | None:
    """The affine BatchNorm2d whose output *is* the output of module ``path``, if any.

    That is the tapped module itself, or the last module of a (nested) ``nn.Sequential``.
    Other containers (residual blocks...) are not inspected: their forward may add or
    activate after their last BatchNorm.
    """
    module = net.submodule(path)
    while isinstance(module, nn.Sequential) and len(module) > 0:
        module = module[-1]
    if isinstance(module, nn.BatchNorm2d) and module.affine and module.num_features == channels:
        return module
    return None


def margin_batchnorm(net: Network, path: str, channels: int) -> nn.BatchNorm2d | None:
    """The BatchNorm2d OFD's margin comes from: the one the network names for a
    pre-activation stage, else the one producing ``path`` (:func:`batchnorm_producing`)."""
    if path in net.pre_activation_stages and net.pre_activation_norms:
        norm = net.submodule(net.pre_activation_norms[net.pre_activation_stages.index(path)])
        if isinstance(norm, nn.BatchNorm2d) and norm.affine and norm.num_features == channels:
            return norm
    return batchnorm_producing(net, path, channels)


class OFDConnector(nn.Module):
    """Student connector (1x1 conv + BN) plus the teacher's per-channel margin (a buffer)."""

    def __init__(self, connector: nn.Module, margin: Tensor, margin_from_batchnorm: bool):
        super().__init__()
        self.connector = connector
        self.register_buffer("margin", margin.view(1, -1, 1, 1))
        self.margin_from_batchnorm = margin_from_batchnorm


class OverhaulLoss(LayerwiseLoss):
    """Overhaul of feature distillation: partial L2 to the margin-ReLU'd teacher pre-activation.

    Heo, Kim, Yun, Park, Kwak & Choi (2019), "A Comprehensive Overhaul of Feature
    Distillation", ICCV 2019, arXiv:1904.01866.

    Target ``sigma_m(T) = max(T, m)`` with a per-channel margin ``m = E[x | x < 0]`` of the
    teacher's pre-ReLU response, derived from the BatchNorm that produces the tapped
    feature (``x ~ N(beta, gamma^2)``; ``-3 |gamma|`` when ``P(x < 0) <= 0.001``). The
    partial L2 ``sum_i (sigma_m(T)_i - r(S)_i)^2`` skips positions where
    ``r(S)_i <= sigma_m(T)_i <= 0``; ``r`` is a 1x1 conv + BN connector. Summed over
    neurons, averaged over the batch.

    Layers follow mdistiller ``mdistiller/distillers/OFD.py`` (the authors' code,
    clovaai/overhaul-distillation, does the same): with ``layer_weights: halving``
    (default) layer ``i`` of ``n`` is weighted ``1 / 2^(n - i - 1)`` (the deepest 1) and
    the layers are summed; ``equal`` sums them unweighted (the paper states no layer
    weights). Published weight: 0.001 (mdistiller ``OFD.LOSS.FEAT_WEIGHT``; the
    authors' code divides by 1000). mdistiller pools the teacher map to the student's
    size where this resizes the connector's output to the teacher's (the same when the
    sizes match).

    Taps: by default every stage's pre-ReLU output (the network's
    ``pre_activation_stages``), as the references do (mdistiller ``get_stage_channels`` /
    ``preact_feats``); a network that declares none is tapped at its stages.

    Margin source: for a pre-activation stage, the BatchNorm the network names for it
    (``pre_activation_norms``: the last block's ``bn2``, mdistiller's
    ``get_bn_before_relu``); else, when the tapped teacher module is a BatchNorm2d (or an
    nn.Sequential ending in one), its affine weight and bias; otherwise (post-ReLU taps,
    token maps) the margin is **zero**, which makes the target the teacher feature itself
    and still skips "both non-positive, student below" positions.
    """

    loss_name = "ofd"
    params_model = OFDParams
    default_taps = "all_stages_pre_activation"
    feature_kind = "map"

    def layer_weights(self, count: int) -> list[float]:
        if self.params.layer_weights == "equal":
            return [1.0] * count
        return [1.0 / 2 ** (count - i - 1) for i in range(count)]

    def build_layer(self, pair: LayerPair, context: SetupContext, teacher_index: int) -> nn.Module:
        channels = pair.teacher_shape[1]
        norm = margin_batchnorm(context.teachers[teacher_index], pair.teacher_path, channels)
        if norm is None:
            margin = torch.zeros(channels)
        else:
            margin = gaussian_negative_margin(norm.bias.detach().float().cpu(), norm.weight.detach().float().cpu())
        connector = make_connector("conv1x1", pair.student_shape, pair.teacher_shape)
        return OFDConnector(connector, margin, norm is not None)

    def layer_loss(self, student: Tensor, teacher: Tensor, module: nn.Module) -> Tensor:
        response = module.connector(student).float()
        target = torch.maximum(teacher, module.margin)
        counted = (response > target) | (target > 0)  # skip where response <= target <= 0
        return ((response - target).pow(2) * counted).flatten(1).sum(dim=1).mean()
