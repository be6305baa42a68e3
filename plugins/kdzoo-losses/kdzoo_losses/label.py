"""Losses that use only the labels: they run without teachers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.api import DistillBatch, Loss, ModelOutputs
from kdzoo_losses._math import fp32, tempered_kl


class CrossEntropy(Loss):
    """Cross-entropy of the student's logits with the labels, optionally label-smoothed.

    Label smoothing as in Szegedy et al. 2016 (arXiv 1512.00567): the target is
    ``(1 - eps) * one_hot + eps / K``. The task loss (``is_task_loss``): under
    ``optimizer: dot`` its gradient takes the task momentum.
    """

    uses_teachers = False
    is_task_loss = True

    def pair(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: DistillBatch, teacher_index: int) -> Tensor:
        return F.cross_entropy(fp32(student.logits), batch.targets, label_smoothing=self.params.label_smoothing)


class TeacherFreeKD(Loss):
    """Tf-KD_reg: KD from a hand-designed "virtual teacher" instead of a trained one.

    Yuan, Tay, Li, Wang, Feng, 2020, "Revisiting Knowledge Distillation via Label
    Smoothing Regularization" (CVPR 2020, arXiv 1909.11723). The virtual teacher puts
    probability ``a`` on the correct class and ``(1-a)/(K-1)`` on every other class
    (``p^d``).

    ``convention: reference`` (default) follows the authors' ``loss_kd_regularization``
    (yuanli2333/Teacher-free-Knowledge-Distillation ``my_loss_function.py``): the target
    is ``softmax(p^d / T)`` (the probabilities used as logits), the student is not
    tempered, and ``nn.KLDivLoss()``'s default reduction of their PyTorch averages the KL
    terms over all ``B * K`` entries; a = 0.99, T = 20. Published weight: their
    ``reg_alpha * multiplier`` = 0.1 * 100 = 10, with CE at ``1 - reg_alpha`` = 0.9
    (``experiments/base_experiments/base_resnet18/params.json``, CIFAR-100).

    ``convention: paper``: the paper's equation ``T^2 * KL(p^d_T || softmax(s/T))``
    (batch mean), with ``p^d_T = softmax(log(p^d) / T)`` the designed distribution
    softened at temperature T: at T = 1 the target is exactly ``p^d``.
    """

    uses_teachers = False

    def pair(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: DistillBatch, teacher_index: int) -> Tensor:
        logits = fp32(student.logits)
        num_classes = logits.shape[1]
        correct = self.params.correct_prob
        temperature = self.params.temperature
        if self.params.convention == "reference":
            designed = torch.full_like(logits, (1.0 - correct) / (num_classes - 1))
            designed.scatter_(1, batch.targets.view(-1, 1), correct)
            target_log_probs = F.log_softmax(designed / temperature, dim=1)
            kl_terms = F.kl_div(F.log_softmax(logits, dim=1), target_log_probs, reduction="none", log_target=True)
            return kl_terms.mean()
        # The log of the designed distribution is a logit vector whose softmax is that distribution.
        virtual_teacher = torch.full_like(logits, math.log((1.0 - correct) / (num_classes - 1)))
        virtual_teacher.scatter_(1, batch.targets.view(-1, 1), math.log(correct))
        return tempered_kl(logits, virtual_teacher, temperature).mean()
