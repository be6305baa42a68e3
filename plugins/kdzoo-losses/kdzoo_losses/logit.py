"""Distillation losses on the teachers' logits.

Per-teacher losses override ``pair`` and get the mean over teachers from
``kdzoo.api.Loss``; ``EnsembleKD`` defines its own multi-teacher rule.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.api import DistillBatch, Loss, ModelOutputs
from kdzoo_losses._math import (
    fp32,
    kl_per_sample,
    non_target_logits,
    pearson_rows,
    target_vs_rest_log_probs,
    teacher_fp32,
    tempered_kl,
)


class KD(Loss):
    """Vanilla knowledge distillation: ``T^2 * KL(softmax(t/T) || softmax(s/T))``, batch mean.

    Hinton, Vinyals, Dean, 2015, "Distilling the Knowledge in a Neural Network"
    (arXiv 1503.02531).
    """

    def pair(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: DistillBatch, teacher_index: int) -> Tensor:
        return tempered_kl(student.logits, teacher.logits, self.params.temperature).mean()


class EnsembleKD(Loss):
    """KD against the ensemble: one KL to the mean of the teachers' logits.

    ``T^2 * KL(softmax(mean_i t_i / T) || softmax(s / T))``, batch mean. Hinton, Vinyals,
    Dean, 2015, "Distilling the Knowledge in a Neural Network" (arXiv 1503.02531) distil
    an ensemble into one model; the ensemble here is the mean of logits, the same
    ensemble the study's fidelity metrics use (``kdzoo.api.ensemble_logits``). With several
    teachers this differs from ``kd``, which averages the per-teacher KLs.
    """

    def forward(self, batch: DistillBatch) -> Tensor:
        if not batch.teachers:
            raise ValueError(f"{type(self).__name__} needs at least one teacher")
        ensemble = torch.stack([teacher_fp32(t.logits) for t in batch.teachers]).mean(dim=0)
        return tempered_kl(batch.student.logits, ensemble, self.params.temperature).mean()


class DKD(Loss):
    """Decoupled knowledge distillation: ``alpha * TCKD + beta * NCKD``, both T^2-scaled.

    Zhao, Cui, Song, Qiu, Liang, 2022, "Decoupled Knowledge Distillation" (CVPR 2022,
    arXiv 2203.08679). TCKD is the KL between the binary [target, non-target] split of
    teacher and student; NCKD the KL between their distributions over the non-target
    classes only. As in the authors' code (mdistiller) the loss is multiplied by the
    warm-up factor ``min(epoch / warmup_epochs, 1)`` with epochs counted from 1, i.e.
    ``(batch.epoch + 1) / warmup_epochs`` here.
    """

    def pair(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: DistillBatch, teacher_index: int) -> Tensor:
        p = self.params
        s = fp32(student.logits) / p.temperature
        t = teacher_fp32(teacher.logits) / p.temperature
        y = batch.targets
        tckd = kl_per_sample(target_vs_rest_log_probs(t, y), target_vs_rest_log_probs(s, y))
        nckd = kl_per_sample(
            F.log_softmax(non_target_logits(t, y), dim=1), F.log_softmax(non_target_logits(s, y), dim=1)
        )
        loss = (p.alpha * tckd + p.beta * nckd).mean() * p.temperature**2
        return self.warmup_factor(batch) * loss

    def warmup_factor(self, batch: DistillBatch) -> float:
        warmup = self.params.warmup_epochs
        return 1.0 if warmup == 0 else min((batch.epoch + 1) / warmup, 1.0)


class DIST(Loss):
    """DIST: match relations, not values, of the predicted distributions.

    Huang, You, Wang, Qian, Xu, 2022, "Knowledge Distillation from A Stronger Teacher"
    (NeurIPS 2022, arXiv 2205.10536). With ``Y = softmax(z / tau)``:
    inter-class = mean over samples of ``1 - pearson(Y_s[i], Y_t[i])``;
    intra-class = mean over classes of ``1 - pearson(Y_s[:, c], Y_t[:, c])``;
    loss = ``tau^2 * (beta * inter + gamma * intra)``.

    Follows the authors' ``lib/models/losses/dist_kd.py`` (hunto/image_classification_sota,
    the code behind hunto/DIST_KD); the default tau = 4 is their CIFAR-100 setting
    (``configs/strategies/distill/dist_cifar.yaml``: ``kd: dist_t4``, beta = gamma = 1).
    Published weight: 2 (that config's ``kd_loss_weight``, with CE at 1); on ImageNet
    they use tau = 1.
    """

    def pair(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: DistillBatch, teacher_index: int) -> Tensor:
        p = self.params
        y_s = F.softmax(fp32(student.logits) / p.tau, dim=1)
        y_t = F.softmax(teacher_fp32(teacher.logits) / p.tau, dim=1)
        inter = 1.0 - pearson_rows(y_s, y_t).mean()
        intra = 1.0 - pearson_rows(y_s.t(), y_t.t()).mean()
        return p.tau**2 * (p.beta * inter + p.gamma * intra)


def _z_score(logits: Tensor, eps: float = 1e-7) -> Tensor:
    # Unbiased std and eps added to it, exactly as the LSKD authors' ``normalize``.
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True)
    return (logits - mean) / (std + eps)


class LogitStandardKD(Loss):
    """KD on z-score standardised logits (LSKD).

    Sun, Ren, Li, Wang, Cao, 2024, "Logit Standardization in Knowledge Distillation"
    (CVPR 2024, arXiv 2403.01427). Each sample's logits become ``(z - mean(z)) / std(z)``
    for teacher and student separately, then KD at the base temperature:
    ``T^2 * KL(softmax(z~_t / T) || softmax(z~_s / T))``, batch mean.

    What is implemented is the authors' code: the std is the unbiased one (divides by
    K - 1; the paper writes the population std, a constant factor sqrt(K/(K-1)) on the
    effective temperature), 1e-7 is added to it, and the T^2 factor is kept.
    """

    def pair(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: DistillBatch, teacher_index: int) -> Tensor:
        s = _z_score(fp32(student.logits))
        t = _z_score(teacher_fp32(teacher.logits))
        return tempered_kl(s, t, self.params.temperature).mean()


class TTM(Loss):
    """Transformed teacher matching: temperature on the teacher only.

    Zheng, Yang, 2024, "Knowledge Distillation Based on Transformed Teacher Matching"
    (ICLR 2024, arXiv 2402.11148). The teacher's probabilities are power-transformed,
    ``p~_t = p_t^gamma / sum_j p_t,j^gamma`` (gamma = 1/T, which equals softmax(t / T)),
    and the untempered student matches them: ``KL(p~_t || softmax(s))``, batch mean,
    without a T^2 factor (as in the paper and the authors' code).
    """

    weighted = False

    def pair(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: DistillBatch, teacher_index: int) -> Tensor:
        gamma = self.params.gamma
        t = teacher_fp32(teacher.logits)
        student_log_probs = F.log_softmax(fp32(student.logits), dim=1)
        # log(p_t^gamma) up to a per-row constant is gamma * t, so the normalised
        # power transform is a log-softmax of gamma * t (no underflow of p_t^gamma).
        transformed = F.log_softmax(gamma * t, dim=1)
        kl = kl_per_sample(transformed, student_log_probs)
        if self.weighted:
            kl = self.power_sum(t, gamma) * kl
        return kl.mean()

    @staticmethod
    def power_sum(teacher_logits: Tensor, gamma: float) -> Tensor:
        """``U_gamma(p_t) = sum_j p_t,j^gamma`` per sample, computed in log space."""
        log_power_sum = torch.logsumexp(gamma * teacher_logits, dim=1) - gamma * torch.logsumexp(teacher_logits, dim=1)
        return torch.exp(log_power_sum)


class WTTM(TTM):
    """Weighted transformed teacher matching.

    Zheng, Yang, 2024, "Knowledge Distillation Based on Transformed Teacher Matching"
    (ICLR 2024, arXiv 2402.11148): TTM with each sample's KL weighted by the power sum
    ``U_gamma(p_t) = sum_j p_t,j^gamma`` of its teacher distribution (large for smooth
    teacher outputs), i.e. ``mean_i U_gamma(p_t,i) * KL(p~_t,i || softmax(s_i))`` as in
    the paper's WTTM objective and the authors' code. The paper's beta is the spec weight.
    """

    weighted = True


class NKD(Loss):
    """Normalized knowledge distillation (the teacher-based form of NKD/USKD).

    Yang, Zeng, Li, Zhang, Yuan, Li, 2023, "From Knowledge Distillation to
    Self-Knowledge Distillation: A Unified Approach with Normalized Loss and Customized
    Soft Labels" (ICCV 2023, arXiv 2303.13005). With ``y`` the label:
    ``-t_y * log s_y  -  gamma * T^2 * sum_{i != y} N(t^T)_i * log N(s^T)_i``, batch mean,
    where ``t_y`` is the teacher's (T = 1) probability of the label and ``N(.^T)`` the
    softmax over the non-target logits at temperature T.

    The non-target term is the cross-entropy written in the paper and the authors' code;
    it equals the normalised non-target KL plus the teacher's (constant) non-target
    entropy, so the gradient is the KL's but the value does not reach 0.

    Follows the authors' ``NKDLoss`` (yzd-v/cls_KD ``mmcls/models/dis_losses/nkd.py``);
    the defaults T = 3, gamma = 3.5 are their CIFAR-100 config
    (``configs/distillers/cifar100/res34_distill_res18_cifar.py``; ImageNet: T = 1,
    gamma = 1.5). Published weight: 1 (the loss is added to CE as is).
    """

    def pair(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: DistillBatch, teacher_index: int) -> Tensor:
        p = self.params
        s = fp32(student.logits)
        t = teacher_fp32(teacher.logits)
        y = batch.targets.view(-1, 1)
        teacher_target_prob = F.softmax(t, dim=1).gather(1, y).squeeze(1)
        student_target_log_prob = F.log_softmax(s, dim=1).gather(1, y).squeeze(1)
        target_term = -(teacher_target_prob * student_target_log_prob).mean()

        teacher_rest = F.softmax(non_target_logits(t, batch.targets) / p.temperature, dim=1)
        student_rest = F.log_softmax(non_target_logits(s, batch.targets) / p.temperature, dim=1)
        non_target_term = -(teacher_rest * student_rest).sum(dim=1).mean()
        return target_term + p.gamma * p.temperature**2 * non_target_term
