"""Generative feature distillation: the student regenerates the teacher's map from a masked version of its own."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdzoo.api import SetupContext
from kdzoo_feature_losses import MGDParams
from kdzoo_feature_losses._base import LayerPair, LayerwiseLoss, PlainAligner


class MaskedGenerator(nn.Module):
    """MGD's trainable modules for one layer pair: ``aligner`` onto the teacher's channels and
    size, then the generation block ``conv3x3 -> ReLU -> conv3x3`` (teacher channels
    throughout, with biases)."""

    def __init__(self, student_channels: int, teacher_channels: int, output_size: tuple[int, int]):
        super().__init__()
        self.aligner = PlainAligner(student_channels, teacher_channels, output_size)
        self.generation = nn.Sequential(
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=3, padding=1),
        )


class MaskedGenerativeLoss(LayerwiseLoss):
    """Masked generative distillation: ``sum((G(M * align(S)) - T)^2) / N``.

    Yang, Li, Shao, Shi, Yuan & Yuan (2022), "Masked Generative Distillation", ECCV 2022,
    arXiv:2205.01529.

    The aligned student map is multiplied by a random binary mask ``M`` (a share
    ``mask_ratio`` of it set to zero, drawn afresh every step from torch's global RNG on
    the feature's device) and the generation block ``G`` (3x3 conv, ReLU, 3x3 conv) must
    rebuild the teacher's full map from it; the squared error is summed over C, H, W and
    averaged over the batch. Only the generator's path is trained to match: the student
    learns features from which the teacher's can be regenerated.

    Follows the authors' classification code, yzd-v/MGD ``cls/mmcls/distillation/losses/mgd.py``
    (``MGDLoss``): ``mask: channel`` masks whole channels (``rand(N, C, 1, 1) < lambda`` set to
    0), ``align`` is a 1x1 conv with bias only when the channel counts differ, the loss is
    ``MSELoss(reduction='sum') / N`` on the last stage (``fea_s[-1]``, the default tap here).
    ``mask: spatial`` is their detection / segmentation form (``rand(N, 1, H, W) > 1 - lambda``
    set to 0; published ``lambda_mgd`` 0.65-0.75 there). Published weight: the reference's
    ``alpha_mgd`` multiplies this loss, 7e-5 with ``mask_ratio`` 0.15 for ImageNet
    ResNet-34 -> ResNet-18 (``cls/configs/distillers/mgd/res34_distill_res18_img.py``), added
    to the student's CE. The authors publish no CIFAR-100 setting.

    Difference: the reference asserts equal spatial sizes; here the aligned student map is
    resized (bilinear) to the teacher's size when they differ. Several layer pairs are
    summed (the detection code sums its FPN levels).
    """

    loss_name = "mgd"
    params_model = MGDParams
    default_taps = "last_stage"
    feature_kind = "map"

    def build_layer(self, pair: LayerPair, context: SetupContext, teacher_index: int) -> nn.Module:
        return MaskedGenerator(pair.student_shape[1], pair.teacher_shape[1], tuple(pair.teacher_shape[-2:]))

    def layer_weights(self, count: int) -> list[float]:
        return [1.0] * count

    def keep_mask(self, teacher: Tensor) -> Tensor:
        """The binary mask (1 = kept) for a batch shaped like ``teacher``, drawn as the reference draws it."""
        batch, channels, height, width = teacher.shape
        ratio = self.params.mask_ratio
        if self.params.mask == "channel":
            draw = torch.rand(batch, channels, 1, 1, device=teacher.device)
            return (draw >= ratio).to(teacher.dtype)
        draw = torch.rand(batch, 1, height, width, device=teacher.device)
        return (draw <= 1 - ratio).to(teacher.dtype)

    def layer_loss(self, student: Tensor, teacher: Tensor, module: nn.Module) -> Tensor:
        aligned = module.aligner(student)
        generated = module.generation(aligned * self.keep_mask(teacher))
        return (generated.float() - teacher).pow(2).sum() / teacher.shape[0]
