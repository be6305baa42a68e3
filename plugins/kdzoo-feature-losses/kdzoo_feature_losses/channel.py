"""Channel-wise distillation: each channel's activation map as a distribution over positions."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.api import SetupContext
from kdzoo_feature_losses import CWDParams
from kdzoo_feature_losses._base import LayerPair, LayerwiseLoss, PlainAligner


class ChannelWiseLoss(LayerwiseLoss):
    """Channel-wise distillation: ``tau^2 / (N C) * sum_{n,c} KL(phi(T_nc / tau) || phi(S_nc / tau))``.

    Shu, Liu, Gao, Yan & Shen (2021), "Channel-wise Knowledge Distillation for Dense
    Prediction", ICCV 2021, arXiv:2011.13256.

    ``phi`` is the softmax over the H*W positions of one channel, so every channel of the
    teacher becomes a spatial distribution the student's matching channel must follow;
    the KL is summed over positions, then over channels and samples, divided by ``N * C``
    and multiplied by ``tau^2``.

    Follows the authors' code, irfanICMLL/TorchDistiller
    ``SemSeg-distill/utils/criterion.py`` (``CriterionCWD`` with ``norm_type='channel'``,
    ``divergence='kl'``), and its feature-map form in their detection code
    (pppppM/mmdetection-distiller ``ChannelWiseDivergence``, also mmrazor
    ``mmrazor/models/losses/cwd.py``): a 1x1 conv with bias aligns the student's channels
    when they differ from the teacher's, and ``C`` is the teacher's (aligned) channel count.
    Published settings are for dense prediction only (mmrazor: segmentation logits tau 1,
    weight 5, ``configs/distill/cwd/cwd_cls_head_pspnet_r101_d8_pspnet_r18_d8_512x1024_cityscapes_80k.py``;
    detection FPN features tau 1, weight 10 per level,
    ``configs/distill/mmdet/cwd/cwd_fpn_frcnn_r101_frcnn_r50_1x_coco.py``); the authors
    publish no CIFAR-100 setting. Defaults tap the last stage.

    Difference: the references assert equal spatial sizes; here the aligned student map is
    resized (bilinear) to the teacher's size when they differ. Several layer pairs are
    summed (as the detection configs sum their FPN levels).
    """

    loss_name = "cwd"
    params_model = CWDParams
    default_taps = "last_stage"
    feature_kind = "map"

    def build_layer(self, pair: LayerPair, context: SetupContext, teacher_index: int) -> nn.Module:
        return PlainAligner(pair.student_shape[1], pair.teacher_shape[1], tuple(pair.teacher_shape[-2:]))

    def layer_weights(self, count: int) -> list[float]:
        return [1.0] * count

    def layer_loss(self, student: Tensor, teacher: Tensor, module: nn.Module) -> Tensor:
        tau = self.params.temperature
        aligned = module(student).float()
        batch, channels = teacher.shape[:2]
        log_student = F.log_softmax(aligned.flatten(2) / tau, dim=2)
        log_teacher = F.log_softmax(teacher.flatten(2) / tau, dim=2)
        divergence = (log_teacher.exp() * (log_teacher - log_student)).sum()
        return divergence * tau**2 / (batch * channels)
