"""Relation-based losses: the student mimics how the teacher relates the samples of a batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.api import SetupContext
from kdzoo.api.connectors import make_connector
from kdzoo_feature_losses import CCParams, PKTParams, RKDParams, SPParams
from kdzoo_feature_losses._base import LayerPair, LayerwiseLoss
from kdzoo_feature_losses._math import (
    batch_similarity,
    cosine_conditional_probabilities,
    mean_normalized_distances,
    taylor_rbf_kernel,
    triplet_angle_cosines,
)


class SimilarityPreservingLoss(LayerwiseLoss):
    """Similarity-preserving KD: match the batch's pairwise similarity matrices.

    Tung & Mori (2019), "Similarity-Preserving Knowledge Distillation", ICCV 2019,
    arXiv:1907.09682.

    ``G = normalize_rows(Q Q^T)`` with ``Q`` the ``(b, C*H*W)`` flattened features;
    loss ``||G_T - G_S||_F^2 / b^2``. Dimension-free (no connector); any tapped shape
    works (maps, tokens, embeddings). Defaults tap the last stage's map. With several
    layer pairs the terms are averaged (the paper sums them: a constant factor).
    """

    loss_name = "sp"
    params_model = SPParams
    default_taps = "last_stage"
    feature_kind = "any"

    def layer_loss(self, student: Tensor, teacher: Tensor, module: nn.Module) -> Tensor:
        batch = student.shape[0]
        return (batch_similarity(student) - batch_similarity(teacher)).pow(2).sum() / batch**2


class CorrelationCongruenceLoss(LayerwiseLoss):
    """Correlation congruence: match instance-correlation matrices of the embeddings.

    Peng, Jin, Liu, Zhou, Wu, Liu, Li & Zhang (2019), "Correlation Congruence for
    Knowledge Distillation", ICCV 2019, arXiv:1904.01802.

    ``psi(F)_ij = k(F_i, F_j)``, the Gaussian RBF ``exp(-gamma ||F_i - F_j||^2)`` on
    L2-normalised embeddings, approximated by its order-P Taylor expansion
    ``sum_p exp(-2 gamma) (2 gamma)^p / p! (F_i . F_j)^p`` (gamma = 0.4, P = 2). The
    student embedding first goes through a linear head onto the teacher's width
    (``embed``). The teacher's embedding is used as is: a trainable teacher-side head
    could collapse both kernels to a constant.

    ``convention: reference`` (default) follows torchdistill
    ``torchdistill/losses/mid_level.py:CCKDLoss`` (``single.py`` in older releases;
    gaussian kernel, ``reduction: batchmean``): the **unsquared** Frobenius distance ``||psi(F_T) - psi(F_S)||_F / n^2``.
    torchdistill's published weight is 0.003 (ImageNet, ``configs/sample/ilsvrc2012/cckd``),
    with linear heads on both networks and the kernel applied to unnormalised head
    outputs, so the weight does not carry over exactly. The CIFAR-100 "CC" rows of the
    CRD / RepDistiller tables (weight 0.02) come from a different loss
    (RepDistiller ``distiller_zoo/CC.py``), not this one.

    ``convention: paper``: the paper's eq. (7), the squared distance
    ``||psi(F_T) - psi(F_S)||_2^2 / n^2``.

    Only the correlation term is implemented; the paper's full objective also has CE and
    instance-level KD, which are separate kdzoo losses.
    """

    loss_name = "cc"
    params_model = CCParams
    default_taps = "embedding"
    feature_kind = "embedding"

    def build_layer(self, pair: LayerPair, context: SetupContext, teacher_index: int) -> nn.Module:
        if self.params.embed == "none":
            return nn.Identity()
        return make_connector(self.params.embed, pair.student_shape, pair.teacher_shape)

    def layer_loss(self, student: Tensor, teacher: Tensor, module: nn.Module) -> Tensor:
        gamma, order = self.params.gamma, self.params.order
        difference = taylor_rbf_kernel(module(student).float(), gamma, order) - taylor_rbf_kernel(teacher, gamma, order)
        squared = difference.pow(2).sum()
        if self.params.convention == "reference":
            squared = squared.clamp(min=1e-24).sqrt()  # clamped: finite gradient when the kernels agree
        return squared / len(student) ** 2


class RelationalLoss(LayerwiseLoss):
    """Relational KD: distance-wise and angle-wise potentials of embedding pairs and triplets.

    Park, Kim, Lu & Cho (2019), "Relational Knowledge Distillation", CVPR 2019,
    arXiv:1904.05068.

    Distance-wise: ``psi_D(i, j) = ||e_i - e_j|| / mu`` with ``mu`` the mean distance over
    pairs ``i != j``; angle-wise: ``psi_A(i, j, k) = cos`` of the angle at ``e_i`` between
    ``e_j`` and ``e_k``. Both compared with the Huber loss (smooth L1, delta = 1), weights
    25 and 50. As in the authors' code, the Huber terms are averaged over all ``b^2``
    pairs and ``b^3`` triplets (degenerate ones contribute zero). Dimension-free: no
    connector.
    """

    loss_name = "rkd"
    params_model = RKDParams
    default_taps = "embedding"
    feature_kind = "embedding"

    def layer_loss(self, student: Tensor, teacher: Tensor, module: nn.Module) -> Tensor:
        distance = F.smooth_l1_loss(mean_normalized_distances(student), mean_normalized_distances(teacher))
        angle = F.smooth_l1_loss(triplet_angle_cosines(student), triplet_angle_cosines(teacher))
        return self.params.distance_weight * distance + self.params.angle_weight * angle


class ProbabilisticTransferLoss(LayerwiseLoss):
    """Probabilistic knowledge transfer: KL between cosine-kernel conditional distributions.

    Passalis & Tefas (2018), "Learning Deep Representations with Probabilistic Knowledge
    Transfer", ECCV 2018, arXiv:1803.10837.

    Cosine kernel ``K = (cos + 1) / 2`` of the embeddings, row-normalised into
    conditional probabilities ``p_{j|i}`` (teacher) and ``q_{j|i}`` (student); a 1e-7
    epsilon guards the logarithm. Dimension-free: no connector.

    ``convention: reference`` (default) follows RepDistiller ``distiller_zoo/PKT.py`` (the
    authors' code): the whole ``B x B`` matrix, diagonal included, and the KL terms
    ``p log((p + eps) / (q + eps))`` **averaged over all B^2 entries**. Published weight:
    30000 (RepDistiller ``-b 30000``, mdistiller ``PKT.LOSS.FEAT_WEIGHT``).

    ``convention: paper``: the paper's definition, ``j = i`` excluded from the kernel and
    its normalisation, ``sum_i sum_{j != i} p_{j|i} log(p_{j|i} / q_{j|i})``, divided by
    the batch size (the mean per-anchor KL; the paper's double sum grows with the batch).
    """

    loss_name = "pkt"
    params_model = PKTParams
    default_taps = "embedding"
    feature_kind = "embedding"
    eps = 1e-7

    def layer_loss(self, student: Tensor, teacher: Tensor, module: nn.Module) -> Tensor:
        exclude_self = self.params.convention == "paper"
        target = cosine_conditional_probabilities(teacher, exclude_self)
        model = cosine_conditional_probabilities(student, exclude_self)
        terms = target * torch.log((target + self.eps) / (model + self.eps))
        return terms.sum(dim=1).mean() if exclude_self else terms.mean()
