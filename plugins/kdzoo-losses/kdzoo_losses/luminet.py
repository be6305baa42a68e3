"""LumiNet: KD between batch-standardised ("perception") logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.api import DistillBatch, Loss, ModelOutputs
from kdzoo_losses._math import fp32, kl_per_sample, teacher_fp32

#: added to the batch variance before the square root, as the authors' ``perception``
PERCEPTION_EPS = 1e-5


def perception(logits: Tensor, eps: float = PERCEPTION_EPS) -> Tensor:
    """Each class's logit standardised over the batch: ``(z - mean_b z) / sqrt(var_b z + eps)``,
    with the biased (population) variance."""
    mean = logits.mean(dim=0, keepdim=True)
    var = logits.var(dim=0, keepdim=True, unbiased=False)
    return (logits - mean) / torch.sqrt(var + eps)


class LumiNet(Loss):
    """LumiNet: ``alpha^2 * KL(softmax(P(t)/T) || softmax(P(s)/T))``, batch mean, with warm-up.

    Hossain, Elahi, Ramasinghe, Cheraghian, Rahman, Mohammed, Rahman, 2023, "LumiNet: The
    Bright Side of Perceptual Knowledge Distillation" (arXiv 2310.03669). ``P`` is the
    paper's *perception*: every class column of the logits is standardised over the batch
    (mean and biased variance over the samples, eps 1e-5 inside the square root), for the
    teacher and the student separately, so each sample's logits are read relative to the
    other samples of the batch.

    Follows the authors' code, ismail31416/LumiNet ``mdistiller/distillers/Luminet.py``
    (``perception``, ``luminet_loss``): ``F.kl_div(..., reduction='batchmean')`` scaled by
    ``alpha ** 2`` (not T^2), multiplied by ``min(epoch / warmup, 1)`` with mdistiller's epochs
    counted from 1 (``LUMINET.WARMUP`` 20), i.e. ``(batch.epoch + 1) / warmup_epochs`` here.
    The defaults are their ResNet-32x4 -> ResNet-8x4 config
    (``configs/cifar100/luminet/res32x4_res8x4.yaml``: ALPHA 33, T 4, CE_WEIGHT 2; published
    top-1 77.50); their other CIFAR configs use T 8 with ALPHA 70-75 (VGG-13 -> VGG-8, WRN-40-2
    -> WRN-40-1, -> MobileNetV2) and T 4 with ALPHA 35 (WRN-40-2 -> ShuffleNetV1).
    Published weight: 1 (alpha holds the scale), with CE at 2 for this pair.

    The statistics are over the batch the loss receives: under several processes, each
    process's share of the batch.
    """

    def pair(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: DistillBatch, teacher_index: int) -> Tensor:
        p = self.params
        student_log_probs = F.log_softmax(perception(fp32(student.logits)) / p.temperature, dim=1)
        teacher_log_probs = F.log_softmax(perception(teacher_fp32(teacher.logits)) / p.temperature, dim=1)
        loss = kl_per_sample(teacher_log_probs, student_log_probs).mean() * p.alpha**2
        warmup = p.warmup_epochs
        return loss if warmup == 0 else min((batch.epoch + 1) / warmup, 1.0) * loss
