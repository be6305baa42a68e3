"""Factor transfer: compare compressed "factors" of the teacher and student features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.api import DistillBatch, SetupContext
from kdzoo_feature_losses import FTParams
from kdzoo_feature_losses._base import LayerPair, LayerwiseLoss
from kdzoo_feature_losses._math import resize_to


def _conv_lrelu(in_channels: int, out_channels: int, batch_norm: bool, transposed: bool = False) -> list[nn.Module]:
    conv = (nn.ConvTranspose2d if transposed else nn.Conv2d)(in_channels, out_channels, 3, padding=1)
    return [conv, *([nn.BatchNorm2d(out_channels)] if batch_norm else []), nn.LeakyReLU(0.1)]


class FactorTransferModules(nn.Module):
    """Paraphraser (teacher side: ``encoder`` to factors, ``decoder`` back) and ``translator``
    (student side), as RepDistiller ``models/util.py`` builds them (``Paraphraser(use_bn=False)``,
    ``Translator(use_bn=True)``).

    Encoder: three 3x3 convs with bias, each followed by LeakyReLU(0.1), ending at the factor
    width; decoder: three stride-1 3x3 transposed convs back to the teacher's width, each
    followed by LeakyReLU(0.1); translator: the encoder's layout on the student's width, with
    a BatchNorm after each conv. The paraphraser has no BatchNorm, so it computes the same in
    train and eval mode (frozen after its stage, it needs no mode of its own).
    """

    def __init__(self, student_channels: int, teacher_channels: int, factor_channels: int):
        super().__init__()
        self.encoder = nn.Sequential(
            *_conv_lrelu(teacher_channels, teacher_channels, batch_norm=False),
            *_conv_lrelu(teacher_channels, factor_channels, batch_norm=False),
            *_conv_lrelu(factor_channels, factor_channels, batch_norm=False),
        )
        self.decoder = nn.Sequential(
            *_conv_lrelu(factor_channels, factor_channels, batch_norm=False, transposed=True),
            *_conv_lrelu(factor_channels, teacher_channels, batch_norm=False, transposed=True),
            *_conv_lrelu(teacher_channels, teacher_channels, batch_norm=False, transposed=True),
        )
        self.translator = nn.Sequential(
            *_conv_lrelu(student_channels, student_channels, batch_norm=True),
            *_conv_lrelu(student_channels, factor_channels, batch_norm=True),
            *_conv_lrelu(factor_channels, factor_channels, batch_norm=True),
        )


class FactorTransferLoss(LayerwiseLoss):
    """Factor transfer: L1 distance between L2-normalised teacher and student factors.

    Kim, Park & Kwak (2018), "Paraphrasing Complex Network: Network Compression via
    Factor Transfer", NeurIPS 2018, arXiv:1802.04977.

    ``F_T = paraphraser_encoder(t)`` (``int(paraphrase_rate * C_t)`` channels, rate 0.5),
    ``F_S = translator(s)`` (bilinearly resized to the teacher's spatial size), compared
    through ``phi``: ``| phi(F_T) - phi(F_S) |_1`` averaged over elements.

    ``convention: reference`` (default) follows RepDistiller ``distiller_zoo/FT.py`` (the
    code behind the published CIFAR-100 number, weight 200): ``phi(F)`` is the per-sample
    L2-normalised spatial map of the channel mean of ``F^2`` (its ``p1 = 2``), so the
    term compares where the factors are strong, an H x W vector per sample.
    ``convention: paper``: ``phi(F) = vec(F) / ||vec(F)||_2``, the whole factor as the
    paper's equation writes it (as a mean over elements; the paper's p = 1 norm is a sum).

    Stages (``stages:`` of the spec; RepDistiller ``train_student.py`` with
    ``helper/pretrain.py:init`` for ``--distill factor``, the setting behind the published
    CIFAR-100 number):

    - ``paraphraser``: the paraphraser alone learns to reconstruct the teacher's feature,
      ``MSE(decoder(encoder(t)), t)`` (mean over elements, RepDistiller's ``nn.MSELoss``);
      the student and the translator take no part. RepDistiller trains it 30 epochs
      (``init_epochs``) with SGD at lr 0.01 for CIFAR ResNet students (0.05 otherwise),
      momentum 0.9, weight decay 5e-4, a constant lr, the student in eval mode: a stage
      with ``student: frozen``, ``ce`` at weight 0.
    - ``transfer``: the transfer term alone, the paraphraser frozen (its factors computed
      without gradient; RepDistiller leaves it out of the optimizer and in eval mode).

    In a run without stages the paraphraser trains jointly instead: the loss adds
    ``reconstruction_weight * MSE(decoder(encoder(t)), t)``, and the teacher factor is
    detached in the transfer term, so the paraphraser learns only to reconstruct (as if
    pre-trained) and never drifts toward the student; early in training its factors are
    not yet meaningful.
    """

    loss_name = "ft"
    params_model = FTParams
    default_taps = "last_stage"
    feature_kind = "map"
    stages = ("paraphraser", "transfer")

    def build_layer(self, pair: LayerPair, context: SetupContext, teacher_index: int) -> nn.Module:
        factor_channels = max(1, int(self.params.paraphrase_rate * pair.teacher_shape[1]))
        return FactorTransferModules(pair.student_shape[1], pair.teacher_shape[1], factor_channels)

    def compare(self, student: list[Tensor], teacher: list[Tensor], modules: nn.Module, batch: DistillBatch) -> Tensor:
        losses = [self.stage_loss(s, t, module, batch.stage) for s, t, module in zip(student, teacher, modules)]
        return torch.stack([weight * loss for weight, loss in zip(self.layer_weights(len(losses)), losses)]).sum()

    def stage_loss(self, student: Tensor, teacher: Tensor, module: nn.Module, stage: str | None) -> Tensor:
        if stage == "paraphraser":
            return self.reconstruction(teacher, module)
        if stage == "transfer":
            with torch.no_grad():  # frozen: trained in the paraphraser stage
                teacher_factor = module.encoder(teacher)
            return self.transfer(student, teacher_factor, module)
        return self.layer_loss(student, teacher, module)

    def layer_loss(self, student: Tensor, teacher: Tensor, module: nn.Module) -> Tensor:
        """The loss of a run without stages: transfer plus the jointly trained reconstruction."""
        teacher_factor = module.encoder(teacher)
        reconstruction = F.mse_loss(module.decoder(teacher_factor).float(), teacher)
        return self.transfer(student, teacher_factor.detach(), module) + self.params.reconstruction_weight * reconstruction

    @staticmethod
    def reconstruction(teacher: Tensor, module: nn.Module) -> Tensor:
        return F.mse_loss(module.decoder(module.encoder(teacher)).float(), teacher)

    def transfer(self, student: Tensor, teacher_factor: Tensor, module: nn.Module) -> Tensor:
        student_factor = resize_to(module.translator(student), tuple(teacher_factor.shape[-2:]))
        return F.l1_loss(self.factor_vector(student_factor), self.factor_vector(teacher_factor))

    def factor_vector(self, factor: Tensor) -> Tensor:
        """``phi(F)``: per sample, L2-normalised (see the class docstring for the two forms)."""
        factor = factor.float()
        if self.params.convention == "reference":
            factor = factor.pow(2).mean(dim=1)  # RepDistiller's p1 = 2: a spatial map
        return F.normalize(factor.flatten(1), p=2, dim=1)
