"""Class-wise self-knowledge distillation (CS-KD): a label-only regulariser."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdzoo.api import DistillBatch, Loss, ModelOutputs
from kdzoo_losses._math import fp32, full_precision


class ClassWiseSelfKD(Loss):
    """CS-KD: each sample's prediction matches the model's own (fixed) prediction on
    another sample of the same class.

    Yun, Park, Lee, Shin, 2020, "Regularizing Class-wise Predictions via
    Self-knowledge Distillation" (CVPR 2020, arXiv 2003.13964). For a pair (x, x') of
    the same class: ``T^2 * KL(softmax(f(x') / T) || softmax(f(x) / T))``, the target
    ``f(x')`` without gradient; T = 4 and the regulariser's weight ``lamda`` = 1 on
    CIFAR-100 (alinlab/cs-kd ``train.py``: ``KDLoss``, README command ``--lamda 1``).

    The sampler difference: the authors' ``PairBatchSampler`` (``datasets.py``) appends
    to each batch of anchors one random same-class partner per anchor; the partners get
    neither CE nor gradient. kdzoo's loader draws plain random batches, so this loss
    works over the same-class pairs that a batch happens to hold: every sample with at
    least one same-class partner in the batch is an anchor, its term averaged over its
    partners, and the loss is the mean over anchors (0 when the batch holds no pair).
    With CIFAR-100 and batch 64 a sample has a partner with probability
    ``1 - 0.99^63``, about 0.47 (0.72 at batch 128), so about half the samples are
    regularised per step rather than all; both members of a pair are anchors (each
    learns from the other, which CE also trains), and the partners' predictions come
    from the same training-mode forward as the anchors' rather than from a separate one.
    Published weight: 1 (``lamda``), with CE at 1.
    """

    uses_teachers = False

    def pair(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: DistillBatch, teacher_index: int) -> Tensor:
        temperature = self.params.temperature
        log_probs = F.log_softmax(fp32(student.logits) / temperature, dim=1)
        targets_log_probs = log_probs.detach()
        # kl[i, j] = KL(p_j || p_i): partner j (fixed) as the target of anchor i.
        negative_entropy = (targets_log_probs.exp() * targets_log_probs).sum(dim=1)
        with full_precision(log_probs):
            kl = negative_entropy.unsqueeze(0) - log_probs @ targets_log_probs.exp().t()
        targets = batch.targets
        partners = targets.view(-1, 1) == targets.view(1, -1)
        partners.fill_diagonal_(False)
        partner_counts = partners.sum(dim=1)
        per_anchor = (kl * partners).sum(dim=1) / partner_counts.clamp_min(1)
        anchors = partner_counts > 0
        # The mean over anchors, written without indexing (no device sync); 0 without pairs.
        return temperature**2 * (per_anchor * anchors).sum() / anchors.sum().clamp_min(1)
