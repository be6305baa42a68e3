"""Logit matching: the mean squared error between student and teacher logits."""

from __future__ import annotations

from torch import Tensor

from kdzoo.api import DistillBatch, Loss, ModelOutputs
from kdzoo_losses._math import fp32, teacher_fp32


class LogitMSE(Loss):
    """Squared error between the raw logits of student and teacher, ``(z_s - z_t)^2``.

    Kim, Oh, Kim, Cho, Yun, 2021, "Comparing Kullback-Leibler Divergence and Mean Squared
    Error Loss in Knowledge Distillation" (IJCAI 2021, arXiv 2105.08919): KD's T^2-scaled KL
    tends to logit matching as T grows, so the student regresses the teacher's logits directly.
    The logits are used as they are: no temperature, no softmax, no centring or other
    normalisation.

    Follows the authors' code, jhoon-oh/kd_data ``code/image_classfication/tools/losses.py``
    (``mse_logit``: ``nn.MSELoss()`` with its default mean reduction) as ``tools/traineval.py``
    calls it under ``--logit l2_logit``: ``reduction: elements`` (the default) is the mean
    over batch x classes. ``reduction: classes`` is the paper's ``||z_s - z_t||_2^2``, summed
    over the classes and averaged over the batch, which is the number of classes times the
    former (the paper's form is recalled, not read here). With ``l2_logit`` their loss is this
    MSE alone (their ``--alpha`` and ``--temperature`` are unused, no CE term): published
    weight 1, without ``ce``. Their CIFAR-100 runs distil WRN-28-4 into WRN students (200
    epochs, batch 128, SGD lr 0.1 with Nesterov, weight decay 5e-4 off the BatchNorm and bias
    parameters, lr x0.1 at epochs 100 and 150).

    Several teachers: the mean over teachers of each teacher's MSE, as ``kd``. The authors'
    ``--ensemble`` instead regresses the sum of the teachers' logits, not reproduced.
    """

    def pair(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: DistillBatch, teacher_index: int) -> Tensor:
        squared_error = (fp32(student.logits) - teacher_fp32(teacher.logits)) ** 2
        if self.params.reduction == "classes":
            return squared_error.sum(dim=1).mean()
        return squared_error.mean()
