"""Multi-level logit distillation (MLKD): instance, batch and class-level alignment of the
predictions at several temperatures, on one view or on a weak and a strong view."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.api import DistillBatch, Loss, ModelOutputs, ViewRequest
from kdzoo_losses._math import fp32, full_precision, kl_per_sample, teacher_fp32, tempered_kl

STRONG = "strong"  # the name the two-view form reads its second view under (batch.views)


def _share_at_or_below_median(values: Tensor) -> Tensor:
    """The fraction of ``values`` at or below their median (linear interpolation, as
    ``np.percentile(values, 50)``)."""
    return (values <= torch.quantile(values, 0.5)).float().mean()


class MLKD(Loss):
    """Multi-level logit distillation on the batch given (the authors' weak view), and
    with ``strong_view`` set on a second, strong view too (the authors' two-view form).

    Jin, Wang, Lin, 2023, "Multi-Level Logit Distillation" (CVPR 2023). With
    ``P_T = softmax(z / T)`` of a batch (``B x C``), for every temperature T of
    ``temperatures`` (prediction augmentation):

    - instance level: ``T^2 * mean_i KL(P_T^t[i] || P_T^s[i])``;
    - batch level: ``||P^t P^t' - P^s P^s'||_F^2 / B`` (the ``B x B`` sample Gram matrices);
    - class level: ``||P^t' P^t - P^s' P^s||_F^2 / C`` (the ``C x C`` class Gram matrices);

    loss = ``sum_T [m_i * (instance_T + batch_T) + m_c * class_T]``.

    Follows the authors' ``KD_ours`` (Jin-Ying/Multi-Level-Logit-Distillation
    ``mdistiller/distillers/KD_ours.py``) restricted to one view, i.e. the ``MLKD_NOAUG``
    of the logit-standardisation and RLD code (sunshangquan/logit-standardization-KD,
    zju-SWJ/RLD ``mdistiller/distillers/MLKD_NOAUG.py``): temperatures 4 (the config's),
    3, 5, 2, 6. Their confidence masks (samples whose teacher confidence, and classes whose
    summed teacher probability, are at or below the batch median) multiply losses already
    averaged over the batch (the per-sample reduction is commented out), so each acts as the
    scalar share ``m_i``, ``m_c`` of masked samples / classes (about 1/2): reproduced here.

    Two views (``strong_view`` set): ``KD_ours`` itself, which sees every image also through
    a strong (RandAugment) view ``s`` and adds, to the masked weak-view terms above,
    ``strong_ce_weight * CE(s_s, y)`` and an unmasked instance-level block
    ``sum_T T^2 * mean_i KL(P_T^t[i] || P_T^s[i])`` over every temperature, on the strong
    view at ``strong_temperatures`` and on the weak view at the others: the authors'
    ``loss_kd_strong`` reads the strong logits at T = 4, 3, 5 and the weak logits at 2 and
    6, reproduced here. Their strong-view batch and class terms (``loss_cc_strong``,
    ``loss_bc_strong``) are computed but left out of the loss they return, so they are
    left out here too.
    Published weight: 0.9 (``KD.LOSS.KD_WEIGHT`` multiplies every term), with CE at 0.1.
    """

    def views(self) -> dict[str, ViewRequest]:
        policy = self.params.strong_view
        return {} if policy is None else {STRONG: ViewRequest(policy.name, dict(policy.params))}

    def pair(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: DistillBatch, teacher_index: int) -> Tensor:
        total = self._weak_view(student, teacher)
        if self.params.strong_view is None:
            return total
        strong = batch.views[STRONG]
        s_s, t_s = strong.student.logits, strong.teachers[teacher_index].logits
        for temperature in self.params.temperatures:
            s, t = (s_s, t_s) if temperature in self.params.strong_temperatures else (student.logits, teacher.logits)
            total = total + tempered_kl(s, t, temperature).mean()
        return total + self.params.strong_ce_weight * F.cross_entropy(fp32(s_s), batch.targets)

    def _weak_view(self, student: ModelOutputs, teacher: ModelOutputs) -> Tensor:
        """The one-view form: the masked instance, batch and class levels on the batch given."""
        s = fp32(student.logits)
        t = teacher_fp32(teacher.logits)
        batch_size, num_classes = t.shape
        with torch.no_grad():
            teacher_probs = F.softmax(t, dim=1)
            sample_share = _share_at_or_below_median(teacher_probs.max(dim=1).values)
            class_share = _share_at_or_below_median(teacher_probs.sum(dim=0))
        total = s.new_zeros(())
        for temperature in self.params.temperatures:
            teacher_log_probs = F.log_softmax(t / temperature, dim=1)
            student_log_probs = F.log_softmax(s / temperature, dim=1)
            instance = kl_per_sample(teacher_log_probs, student_log_probs).mean() * temperature**2
            p_t, p_s = teacher_log_probs.exp(), student_log_probs.exp()
            with full_precision(p_s):
                batch_level = (p_t @ p_t.t() - p_s @ p_s.t()).pow(2).sum() / batch_size
                class_level = (p_t.t() @ p_t - p_s.t() @ p_s).pow(2).sum() / num_classes
            total = total + sample_share * (instance + batch_level) + class_share * class_level
        return total
