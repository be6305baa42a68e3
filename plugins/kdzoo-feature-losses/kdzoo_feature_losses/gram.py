"""Losses on second-order statistics: FSP matrices, inter-channel correlations, SVD relations."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.api import DistillBatch, SetupContext
from kdzoo.api.connectors import make_connector
from kdzoo_feature_losses import FSPParams, ICKDParams, KDSVDParams
from kdzoo_feature_losses._base import LayerPair, LayerwiseLoss, TappedLoss, describe_shape
from kdzoo_feature_losses._math import (
    align_singular_vectors,
    channel_gram,
    fsp_matrix,
    right_singular_vectors,
    singular_vector_rbf,
)


def _channel_connectors(kind: str, pairs: list[LayerPair]) -> nn.ModuleList:
    """Student-to-teacher channel adapters for losses whose statistics ignore the spatial size."""
    return nn.ModuleList(make_connector(kind, p.student_shape, p.teacher_shape, match_spatial=False) for p in pairs)


class FSPLoss(TappedLoss):
    """Flow of solution procedure: match the FSP matrices between consecutive stages.

    Yim, Joo, Bae & Kim (2017), "A Gift from Knowledge Distillation: Fast Optimization,
    Network Minimization and Transfer Learning", CVPR 2017 (not on arXiv; CVF open access).

    ``G_ij(x) = sum_{h,w} F1_i(h, w) F2_j(h, w) / (h * w)`` for each consecutive pair of
    tapped stages (the larger map average-pooled to the smaller size).

    ``convention: reference`` (default) follows RepDistiller ``distiller_zoo/FSP.py``: per
    pair the mean squared difference of the student and teacher matrices (over batch and
    entries), the pairs **summed**. Published weight: 1, in an initialisation stage only.
    RepDistiller also pairs the stem with the first stage (``feat[:-1]``): add the stem
    module to ``student_layers`` / ``teacher_layers`` for that; the default taps only the
    declared stages.
    ``convention: paper``: the paper's ``lambda_i ||G_T - G_S||_2^2`` (summed over the
    entries), averaged over the batch, pairs summed with equal lambda = 1.

    Stage ``init`` (``stages:`` of the spec): RepDistiller uses FSP only to initialise the
    student (``train_student.py`` calls ``helper/pretrain.py:init`` for ``--distill
    fsp``): 30 epochs (``init_epochs``) of this loss alone, the pairs summed unweighted, SGD
    over the student's feature layers (not its classifier: with the loss alone it gets no
    gradient) at the run's lr 0.05, momentum 0.9, weight decay 5e-4, a constant lr; the
    main training then computes no FSP term (``loss_kd`` is 0 for ``fsp``: the ``-b 50`` of
    its scripts is unused): a stage ``init`` with ``ce`` at weight 0, then a stage with
    ``fsp`` at weight 0. In a run with stages, ``fsp`` takes part only in stages named
    ``init``; the loss itself is the same in every stage. Without stages it is simply
    added to the objective.

    The paper requires equal channel counts; for differing widths a 1x1 conv + BN
    connector per student stage (``connector='auto'``) maps it to the teacher's.
    """

    loss_name = "fsp"
    params_model = FSPParams
    default_taps = "all_stages"
    feature_kind = "map"
    min_layers = 2
    stages = ("init",)

    def build(self, pairs: list[LayerPair], context: SetupContext, teacher_index: int) -> nn.Module:
        return _channel_connectors(self.params.connector, pairs)

    def compare(self, student: list[Tensor], teacher: list[Tensor], connectors: nn.Module, batch: DistillBatch) -> Tensor:
        student = [connector(s).float() for connector, s in zip(connectors, student)]
        losses = []
        for i in range(len(student) - 1):
            squared = (fsp_matrix(student[i], student[i + 1]) - fsp_matrix(teacher[i], teacher[i + 1])).pow(2)
            losses.append(squared.flatten(1).sum(dim=1).mean() if self.params.convention == "paper" else squared.mean())
        return torch.stack(losses).sum()


class InterChannelCorrelationLoss(LayerwiseLoss):
    """Inter-channel correlation (ICKD-C): match the channels' Gram matrices.

    Liu, Huang, Lin, Xie, Wang, Chang & Liang (2021), "Exploring Inter-Channel
    Correlation for Diversity-Preserved Knowledge Distillation", ICCV 2021,
    arXiv:2202.03680.

    ``G = f f^T`` (``c x c``, ``f`` the ``(c, h*w)`` feature after the student connector),
    each row L2-normalised as in the authors' code. Spatial sizes may differ (G does not
    depend on them). Defaults tap the last stage.

    ``convention: reference`` (default) follows the authors' ICKD-C code
    (ADLab-AutoDrive/ICKD ``Cifar100/distiller_zoo/ICKD.py``): ``sum ||G_S - G_T||^2 /
    (b * c)``, and the student always goes through a 1x1 conv + BN embedding onto the
    teacher's width (``connector: conv1x1``; their ``Embed``). Published weight: 2.5
    (``Cifar100/train_student.sh``, ``-b 2.5``, resnet32x4 -> resnet8x4).
    ``convention: paper``: divided by ``b * c^2``, i.e. the mean over matrix entries.
    """

    loss_name = "ickd"
    params_model = ICKDParams
    default_taps = "last_stage"
    feature_kind = "map"

    def build_layer(self, pair: LayerPair, context: SetupContext, teacher_index: int) -> nn.Module:
        return make_connector(self.params.connector, pair.student_shape, pair.teacher_shape, match_spatial=False)

    def layer_loss(self, student: Tensor, teacher: Tensor, module: nn.Module) -> Tensor:
        student_gram = F.normalize(channel_gram(module(student).float()), p=2, dim=2)
        teacher_gram = F.normalize(channel_gram(teacher), p=2, dim=2)
        if self.params.convention == "paper":
            return F.mse_loss(student_gram, teacher_gram)
        batch, channels = teacher_gram.shape[:2]
        return (student_gram - teacher_gram).pow(2).sum() / (batch * channels)


class SVDLoss(TappedLoss):
    """KD-SVD: transfer the relations between the dominant singular vectors of consecutive layers.

    Lee, Kim & Song (2018), "Self-supervised Knowledge Distillation Using Singular Value
    Decomposition", ECCV 2018, arXiv:1807.06819.

    Per layer and sample, the feature matrix ``(h*w, c)`` is compressed by truncated SVD
    to its top right singular vectors ``V`` (``c``-dimensional): K for the teacher and
    K + 3 for the student. Each teacher vector is paired with the student vector of
    largest |cosine|, sign-flipped to agree (this removes SVD's sign ambiguity), and both
    are scaled by the teacher's L2-normalised top-K singular values. Between consecutive
    layers, the radial basis relations ``exp(-(v_l[c] - v_{l-1}[c'])^2 / 8)`` of the
    k-th vectors' components form ``(c_l, c_{l-1}, K)`` tensors; the loss is their squared
    difference, summed over entries and layer pairs, averaged over the batch.

    Simplified but faithful to the authors' code (K = 1): the student is mapped to the
    teacher's channel count by a 1x1 conv + BN connector when widths differ (the method
    needs equal widths), the authors' custom SVD gradient is replaced by torch's with
    non-finite gradients zeroed (as their code does), and the loss is averaged (not
    summed) over the batch.
    """

    loss_name = "kdsvd"
    params_model = KDSVDParams
    default_taps = "all_stages"
    feature_kind = "map"
    min_layers = 2

    def build(self, pairs: list[LayerPair], context: SetupContext, teacher_index: int) -> nn.Module:
        teacher_count = self.params.num_vectors
        student_count = teacher_count + self.params.extra_student_vectors
        for pair in pairs:
            _, channels, height, width = pair.teacher_shape
            student_area = pair.student_shape[2] * pair.student_shape[3]  # student channels become the teacher's
            for role, path, shape, rank, needed in (
                ("teacher", pair.teacher_path, pair.teacher_shape, min(channels, height * width), teacher_count),
                ("student", pair.student_path, pair.student_shape, min(channels, student_area), student_count),
            ):
                if rank < needed:
                    raise ValueError(
                        f"kdsvd: {role} layer '{path}' {describe_shape(shape)} has at most {rank} singular "
                        f"vectors, {needed} are needed; lower num_vectors / extra_student_vectors"
                    )
        return _channel_connectors(self.params.connector, pairs)

    def compare(self, student: list[Tensor], teacher: list[Tensor], connectors: nn.Module, batch: DistillBatch) -> Tensor:
        teacher_count = self.params.num_vectors
        student_count = teacher_count + self.params.extra_student_vectors
        losses = []
        previous_student = previous_teacher = None
        for connector, s, t in zip(connectors, student, teacher):
            with torch.no_grad():
                teacher_values, teacher_vectors = right_singular_vectors(t, teacher_count)
            _, student_vectors = right_singular_vectors(connector(s).float(), student_count)
            student_vectors = align_singular_vectors(student_vectors, teacher_vectors)
            weights = F.normalize(teacher_values, p=2, dim=1).unsqueeze(1)  # (B, 1, K)
            student_vectors, teacher_vectors = student_vectors * weights, teacher_vectors * weights
            if previous_student is not None:
                scale = self.params.rbf_scale
                student_rbf = singular_vector_rbf(student_vectors, previous_student, scale)
                teacher_rbf = singular_vector_rbf(teacher_vectors, previous_teacher, scale)
                losses.append((student_rbf - teacher_rbf).pow(2).flatten(1).sum(dim=1).mean())
            previous_student, previous_teacher = student_vectors, teacher_vectors
        return torch.stack(losses).sum()
