"""Cross-view consistency regularisation (CRLD): distillation on a weak and a strong view."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdzoo.api import DistillBatch, Loss, ModelOutputs, ViewRequest
from kdzoo_losses._math import fp32, teacher_fp32, tempered_kl

STRONG = "strong"  # the name CRLD reads its second view under (batch.views)


class CRLD(Loss):
    """Cross-view consistency regularisation for knowledge distillation.

    Zhang, Liu, Cai, Ma, 2024, "Cross-View Consistency Regularisation for Knowledge
    Distillation" (ACM MM 2024). Every batch is seen twice: the run's (weak) view ``w``
    and a strong view ``s`` (``strong_view``, a second augmentation of the same images);
    the teacher and the student run on both. With ``kd(a, b)`` the per-sample
    ``T^2 * KL(softmax(b/T) || softmax(a/T))`` of student logits ``a`` and teacher logits
    ``b``, ``m_w`` the samples whose teacher confidence ``max softmax(t_w)`` is at least
    ``tau_w`` and ``m_s`` those whose ``max softmax(t_s)`` is at least ``tau_s``:

    - within-view: ``mean_i m_w * (kd(s_w, t_w) + kd(s_s, t_s))``;
    - cross-view: ``mean_i m_s * (kd(s_s, t_w) + kd(s_w, t_s))``;

    loss = ``strong_ce_weight * CE(s_s, y) + within_weight * within + cross_weight * cross``.
    The weak view's CE is the spec's ``ce`` term (the authors weigh both CEs alike).

    Follows the authors' ``CRLD`` distiller (their mdistiller fork,
    ``mdistiller/distillers/CRLD.py``, defaults in ``mdistiller/engine/cfg.py``: CE 1.0,
    WV 2.0, CV 0.5, T 4, TAU_W 0.9, TAU_S 0.2): the masks are binary, multiply per-sample
    KD values and the batch mean runs over every sample, masked or not; confidences are
    the teachers' at temperature 1. Several teachers: the mean of this loss over teachers.
    """

    def views(self) -> dict[str, ViewRequest]:
        policy = self.params.strong_view
        return {STRONG: ViewRequest(policy.name, dict(policy.params))}

    def pair(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: DistillBatch, teacher_index: int) -> Tensor:
        p = self.params
        strong = batch.views[STRONG]
        s_w, s_s = student.logits, strong.student.logits
        t_w, t_s = teacher.logits, strong.teachers[teacher_index].logits
        confident_w = F.softmax(teacher_fp32(t_w), dim=1).amax(dim=1).ge(p.tau_w).float()
        confident_s = F.softmax(teacher_fp32(t_s), dim=1).amax(dim=1).ge(p.tau_s).float()
        within = (confident_w * (tempered_kl(s_w, t_w, p.temperature) + tempered_kl(s_s, t_s, p.temperature))).mean()
        cross = (confident_s * (tempered_kl(s_s, t_w, p.temperature) + tempered_kl(s_w, t_s, p.temperature))).mean()
        strong_ce = F.cross_entropy(fp32(s_s), batch.targets)
        return p.strong_ce_weight * strong_ce + p.within_weight * within + p.cross_weight * cross
