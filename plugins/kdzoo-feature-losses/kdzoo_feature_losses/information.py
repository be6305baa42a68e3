"""Information-theoretic losses: variational information distillation and contrastive distillation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.api import DistillBatch, SetupContext, all_gather_tensor
from kdzoo_feature_losses import CRDParams, VIDParams
from kdzoo_feature_losses._base import LayerPair, LayerwiseLoss, TappedLoss
from kdzoo_feature_losses._math import pool_to_common_size


# --------------------------------------------------------------------------- VID
class VIDRegressor(nn.Module):
    """Gaussian ``q(t | s)``: mean from three bias-free 1x1 convs (ReLU between), as the
    references' regressor, and a learnable per-channel variance ``softplus(alpha_c) + min_variance``."""

    def __init__(self, student_channels: int, teacher_channels: int, init_variance: float, min_variance: float):
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(student_channels, teacher_channels, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(teacher_channels, teacher_channels, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(teacher_channels, teacher_channels, 1, bias=False),
        )
        # softplus(alpha) + min_variance == init_variance at the start (inverse softplus)
        start = max(init_variance - min_variance, 1e-6)
        self.alpha = nn.Parameter(torch.full((teacher_channels,), math.log(math.expm1(start))))
        self.min_variance = min_variance

    def variance(self) -> Tensor:
        return F.softplus(self.alpha) + self.min_variance

    def forward(self, student: Tensor) -> tuple[Tensor, Tensor]:
        return self.mean(student), self.variance().view(1, -1, 1, 1)


class VariationalInformationLoss(LayerwiseLoss):
    """Variational information distillation: negative log-likelihood of the teacher feature
    under a Gaussian predicted from the student's.

    Ahn, Hu, Damianou, Lawrence & Dai (2019), "Variational Information Distillation for
    Knowledge Transfer", CVPR 2019, arXiv:1904.05835.

    ``-log q(t | s) = sum_c sum_hw [ log sigma_c + (t_chw - mu_chw(s))^2 / (2 sigma_c^2) ]``
    (+ const, dropped) with ``mu`` a regressor of three 1x1 convs and
    ``sigma_c^2 = softplus(alpha_c) + eps`` learnable per channel (initial variance 5).
    The larger of the two maps is average-pooled to the smaller spatial size first (the
    student before the regressor).

    ``convention: reference`` (default) follows RepDistiller ``distiller_zoo/VID.py`` (and
    mdistiller ``VID.py``): the NLL **averaged over elements** per layer, all stages
    tapped, per-layer losses **summed**. Published weight: 1 (RepDistiller ``-b 1``,
    mdistiller ``VID.LOSS.FEAT_WEIGHT``).

    ``convention: paper``: the NLL summed over channels and positions (the paper's
    ``-log q``), averaged over the batch, summed over layers.
    """

    loss_name = "vid"
    params_model = VIDParams
    default_taps = "all_stages"
    feature_kind = "map"

    def layer_weights(self, count: int) -> list[float]:
        return [1.0] * count

    def build_layer(self, pair: LayerPair, context: SetupContext, teacher_index: int) -> nn.Module:
        return VIDRegressor(pair.student_shape[1], pair.teacher_shape[1], self.params.init_variance, self.params.min_variance)

    def layer_loss(self, student: Tensor, teacher: Tensor, module: nn.Module) -> Tensor:
        student, teacher = pool_to_common_size(student, teacher)
        mean, variance = module(student)
        negative_log_likelihood = 0.5 * (torch.log(variance) + (teacher - mean.float()).pow(2) / variance)
        if self.params.convention == "paper":
            return negative_log_likelihood.flatten(1).sum(dim=1).mean()
        return negative_log_likelihood.mean()


# --------------------------------------------------------------------------- CRD
class CRDHeads(nn.Module):
    """Per-teacher CRD state: embedding heads and the two momentum memory banks.

    The banks hold one L2-normalised ``embed_dim`` vector per training sample (buffers:
    saved in the checkpoint, not trained). ``normalizers`` are the NCE constants ``Z``
    for the student-anchor and teacher-anchor terms, estimated on the first batch
    (0 = not yet estimated).
    """

    def __init__(self, student_dim: int, teacher_dim: int, embed_dim: int, num_samples: int):
        super().__init__()
        self.embed_student = nn.Linear(student_dim, embed_dim)
        self.embed_teacher = nn.Linear(teacher_dim, embed_dim)
        bound = 1.0 / math.sqrt(embed_dim / 3)  # uniform init with the variance of a unit vector's entries
        self.register_buffer("student_memory", torch.rand(num_samples, embed_dim) * 2 * bound - bound)
        self.register_buffer("teacher_memory", torch.rand(num_samples, embed_dim) * 2 * bound - bound)
        self.register_buffer("normalizers", torch.zeros(2))


class ContrastiveRepresentationLoss(TappedLoss):
    """Contrastive representation distillation with memory banks and NCE.

    Tian, Krishnan & Isola (2020), "Contrastive Representation Distillation", ICLR 2020,
    arXiv:1910.10699.

    Student and teacher embeddings go through linear heads to ``embed_dim`` (128) and are
    L2-normalised. For each sample ``i`` (``batch.indices``), the positive is the other
    model's bank entry ``i`` and ``K`` negatives (``nce_k``, clipped to ``N - 1``) are bank
    entries drawn uniformly (they may rarely include ``i``, as in the authors' code).
    Scores ``h = exp(v . m / T) / Z`` (T = 0.07; ``Z`` estimated on the first batch as
    ``mean(exp(.)) * N``, then fixed) enter the NCE loss
    ``-[log h_pos / (h_pos + K/N) + sum_neg log (K/N) / (h_neg + K/N)]`` averaged over the
    batch; the loss is the sum of the student-anchor (teacher bank) and teacher-anchor
    (student bank) terms. After each training step, banks are updated with momentum 0.5
    and re-normalised. The heads are trained; the teacher features are not.

    Follows RepDistiller ``crd/criterion.py`` + ``crd/memory.py`` (``nce_k`` 16384,
    ``nce_t`` 0.07, ``nce_m`` 0.5, ``feat_dim`` 128 are its ``train_student.py``
    defaults, and mdistiller's ``CRD.NCE``). Published weight: 0.8 (RepDistiller
    ``-b 0.8``, mdistiller ``CRD.LOSS.FEAT_WEIGHT``).

    Only the CRD term is implemented; the paper adds CE and KD as separate losses.
    One memory bank pair per teacher: multi-teacher CRD is the mean over teachers.
    """

    loss_name = "crd"
    params_model = CRDParams
    default_taps = "embedding"
    feature_kind = "embedding"
    eps = 1e-7

    def build(self, pairs: list[LayerPair], context: SetupContext, teacher_index: int) -> nn.Module:
        if context.num_samples < 2:
            raise ValueError(f"crd needs a training set of at least 2 samples for its memory bank, got {context.num_samples}")
        pair = pairs[0]
        return CRDHeads(pair.student_shape[1], pair.teacher_shape[1], self.params.embed_dim, context.num_samples)

    def num_negatives(self, num_samples: int) -> int:
        return min(self.params.nce_k, num_samples - 1)

    def contrast_indices(self, indices: Tensor, num_samples: int) -> Tensor:
        """``(B, K + 1)`` bank rows to score: the positive first, then K uniform negatives."""
        negatives = torch.randint(0, num_samples, (len(indices), self.num_negatives(num_samples)), device=indices.device)
        return torch.cat([indices.unsqueeze(1), negatives], dim=1)

    def nce_loss(self, scores: Tensor, num_samples: int) -> Tensor:
        """NCE with noise distribution ``1/N``: positives in column 0, negatives after."""
        noise = (scores.shape[1] - 1) / num_samples  # K * P_noise
        positive, negative = scores[:, 0], scores[:, 1:]
        log_positive = torch.log(positive / (positive + noise + self.eps))
        log_negative = torch.log(noise / (negative + noise + self.eps))
        return -(log_positive.sum() + log_negative.sum()) / scores.shape[0]

    def compare(self, student: list[Tensor], teacher: list[Tensor], heads: nn.Module, batch: DistillBatch) -> Tensor:
        student_embedding = F.normalize(heads.embed_student(student[0]).float(), p=2, dim=1)
        teacher_embedding = F.normalize(heads.embed_teacher(teacher[0]).float(), p=2, dim=1)
        num_samples = heads.student_memory.shape[0]
        indices = batch.indices.to(device=heads.student_memory.device, dtype=torch.long)
        rows = self.contrast_indices(indices, num_samples)
        # Each model's embedding is contrasted against the *other* model's bank.
        student_scores = torch.exp(torch.einsum("bkd,bd->bk", heads.teacher_memory[rows], student_embedding) / self.params.temperature)
        teacher_scores = torch.exp(torch.einsum("bkd,bd->bk", heads.student_memory[rows], teacher_embedding) / self.params.temperature)
        if bool((heads.normalizers <= 0).any()):
            with torch.no_grad():  # under several processes: the mean over every rank's first shard
                means = all_gather_tensor(torch.stack([student_scores.mean(), teacher_scores.mean()])[None]).mean(0)
                heads.normalizers.copy_(means * num_samples)
        loss = self.nce_loss(student_scores / heads.normalizers[0], num_samples) + self.nce_loss(
            teacher_scores / heads.normalizers[1], num_samples
        )
        if self.training:
            # Under several processes every rank writes every rank's samples into its banks:
            # the banks see the whole global batch and stay identical across ranks.
            indices = all_gather_tensor(indices)
            self._update_memory(heads.student_memory, indices, all_gather_tensor(student_embedding))
            self._update_memory(heads.teacher_memory, indices, all_gather_tensor(teacher_embedding))
        return loss

    @torch.no_grad()
    def _update_memory(self, memory: Tensor, indices: Tensor, embedding: Tensor) -> None:
        momentum = self.params.momentum
        updated = memory[indices] * momentum + embedding.detach() * (1 - momentum)
        memory.index_copy_(0, indices, F.normalize(updated, p=2, dim=1))
