"""Refined logit distillation (RLD): distil the teacher's confidence and its class ranking,
without the classes that would teach the student a wrong label."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdzoo.api import DistillBatch, Loss, ModelOutputs
from kdzoo_losses._math import fp32, kl_per_sample, target_vs_rest_log_probs, teacher_fp32

# Masked logits are set to this (not -inf): a row masked entirely stays finite and uniform
# on both sides, so it contributes 0, as in the authors' code.
_MASKED = -1e9


class RLD(Loss):
    """Refined logit distillation: ``alpha * SCD + beta * MCD``, with warm-up.

    Sun, Chen, Lyu et al., 2025, "Knowledge Distillation with Refined Logits"
    (ICCV 2025, arXiv 2408.07703).

    - SCD (sample confidence distillation): the student's binary split
      [p_s(label), rest] matches the teacher's [p_t(its own top class), rest], at
      ``scd_temperature``; ``T_a^2 * KL``, batch mean. The teacher's confidence is
      distilled without telling the student its (possibly wrong) top class.
    - MCD (masked correlation distillation): the classes the teacher ranks at or above
      the label (its logit >= the label's logit, the label included) are removed from both
      distributions, and the student matches the teacher's distribution over the rest at
      ``temperature``; ``T^2 * KL``, batch mean.

    Follows the authors' ``rld_loss`` (zju-SWJ/RLD ``mdistiller/distillers/RLD.py``,
    logit standardisation off): masked logits are set to -1e9, so a sample whose label
    the teacher ranks last (everything masked) contributes 0. The loss is multiplied by
    ``min((epoch + 1) / warmup_epochs, 1)`` (their ``min(epoch / warmup, 1)``, epochs from
    1). Defaults are their CIFAR-100 command (README: ``--same-t RLD.ALPHA 1. RLD.BETA 8.
    RLD.T 4.``, config ``configs/cifar100/rld/resnet32x4_resnet8x4.yaml``). Published
    weight: 1 (alpha and beta are inside), with CE at 1.
    """

    def pair(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: DistillBatch, teacher_index: int) -> Tensor:
        p = self.params
        s = fp32(student.logits)
        t = teacher_fp32(teacher.logits)
        y = batch.targets
        scd_temperature = p.temperature if p.scd_temperature is None else p.scd_temperature

        teacher_top = t.argmax(dim=1)
        scd = kl_per_sample(
            target_vs_rest_log_probs(t / scd_temperature, teacher_top),
            target_vs_rest_log_probs(s / scd_temperature, y),
        ).mean() * scd_temperature**2

        at_or_above_label = t >= t.gather(1, y.view(-1, 1))
        teacher_rest = F.log_softmax((t / p.temperature).masked_fill(at_or_above_label, _MASKED), dim=1)
        student_rest = F.log_softmax((s / p.temperature).masked_fill(at_or_above_label, _MASKED), dim=1)
        mcd = kl_per_sample(teacher_rest, student_rest).mean() * p.temperature**2

        warmup = 1.0 if p.warmup_epochs == 0 else min((batch.epoch + 1) / p.warmup_epochs, 1.0)
        return warmup * (p.alpha * scd + p.beta * mcd)
