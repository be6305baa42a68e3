"""Multi-level logit distillation (MLKD): instance, batch and class-level alignment of the
predictions at several temperatures."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.api import DistillBatch, Loss, ModelOutputs
from kdzoo_losses._math import fp32, full_precision, kl_per_sample, teacher_fp32


def _share_at_or_below_median(values: Tensor) -> Tensor:
    """The fraction of ``values`` at or below their median (linear interpolation, as
    ``np.percentile(values, 50)``)."""
    return (values <= torch.quantile(values, 0.5)).float().mean()


class MLKD(Loss):
    """Multi-level logit distillation on the batch given (the authors' weak view).

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

    Not reproduced: the strong-augmentation view of ``KD_ours`` (a second, RandAugment view
    of every image through both networks, with its own CE and unmasked KD terms). The Loss
    API sees one batch; a spec reaches the same batch-level losses on the view it trains on.
    Published weight: 0.9 (``KD.LOSS.KD_WEIGHT`` multiplies every term), with CE at 0.1.
    """

    def pair(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: DistillBatch, teacher_index: int) -> Tensor:
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
