"""Tensor math shared by the feature losses (kept here so every loss computes it one way)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


# --------------------------------------------------------------------------- spatial
def pool_to_common_size(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool two ``(B, C, H, W)`` maps to their common (smallest) spatial size.

    Used where a parameter-free comparison needs equal sizes: pooling the larger map
    never invents detail, unlike upsampling the smaller one.
    """
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    if tuple(a.shape[-2:]) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if tuple(b.shape[-2:]) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


def resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of a ``(B, C, H, W)`` map to ``size`` (no-op when it already has it)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- maps
def attention_map(feature: Tensor, p: float) -> Tensor:
    """Spatial attention ``mean_c |f_c|^p`` of a ``(B, C, H, W)`` map, as ``(B, 1, H, W)``."""
    return feature.abs().pow(p).mean(dim=1, keepdim=True)


def channel_gram(feature: Tensor) -> Tensor:
    """``(B, C, C)`` Gram matrix of the channels of a ``(B, C, H, W)`` map (inner products over H*W)."""
    flat = feature.flatten(2)
    return flat @ flat.transpose(1, 2)


def fsp_matrix(first: Tensor, second: Tensor) -> Tensor:
    """FSP ("flow of solution procedure") matrix ``(B, C1, C2)`` between two maps of one network:
    ``G_ij = sum_hw F1_i(h, w) F2_j(h, w) / (h * w)`` after pooling to a common size."""
    first, second = pool_to_common_size(first, second)
    area = first.shape[-2] * first.shape[-1]
    return first.flatten(2) @ second.flatten(2).transpose(1, 2) / area


# --------------------------------------------------------------------------- relations
def batch_similarity(feature: Tensor) -> Tensor:
    """Row-L2-normalised ``(B, B)`` Gram matrix of the flattened per-sample features (SP)."""
    flat = feature.flatten(1)
    return F.normalize(flat @ flat.t(), p=2, dim=1)


def pairwise_distances(embedding: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distance matrix ``(B, B)`` with an exact zero diagonal.

    Squared distances are clamped before the square root so that the gradient at
    (numerically) coincident points stays finite.
    """
    squared_norms = embedding.pow(2).sum(dim=1)
    squared = squared_norms.unsqueeze(0) + squared_norms.unsqueeze(1) - 2 * embedding @ embedding.t()
    distances = squared.clamp(min=eps).sqrt()
    off_diagonal = 1.0 - torch.eye(len(embedding), device=embedding.device, dtype=embedding.dtype)
    return distances * off_diagonal


def mean_normalized_distances(embedding: Tensor) -> Tensor:
    """RKD's distance potential: the distance matrix divided by the mean off-diagonal
    (non-zero) distance, which makes the relation scale-free."""
    distances = pairwise_distances(embedding)
    positive = distances > 0
    mean_distance = distances.sum() / positive.sum().clamp(min=1)
    return distances / mean_distance.clamp(min=1e-12)


def triplet_angle_cosines(embedding: Tensor) -> Tensor:
    """``(B, B, B)`` tensor of ``cos`` of the angle at vertex ``i`` between ``j`` and ``k``:
    ``<(e_j - e_i)/||e_j - e_i||, (e_k - e_i)/||e_k - e_i||>`` (0 when j or k equals i)."""
    directions = F.normalize(embedding.unsqueeze(0) - embedding.unsqueeze(1), p=2, dim=2)  # [i, j] = e_j - e_i
    return directions @ directions.transpose(1, 2)


def taylor_rbf_kernel(embedding: Tensor, gamma: float, order: int) -> Tensor:
    """``(B, B)`` Gaussian RBF kernel of L2-normalised rows via its order-P Taylor expansion.

    For unit vectors ``||x - y||^2 = 2 - 2 x.y``, so ``exp(-gamma ||x - y||^2) =
    exp(-2 gamma) * sum_p (2 gamma)^p / p! * (x.y)^p`` (truncated at ``p = order``).
    """
    unit = F.normalize(embedding, p=2, dim=1)
    cosine = unit @ unit.t()
    kernel = torch.zeros_like(cosine)
    for p in range(order + 1):
        kernel = kernel + math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * cosine.pow(p)
    return kernel


def cosine_conditional_probabilities(embedding: Tensor, exclude_self: bool = True) -> Tensor:
    """PKT's ``(B, B)`` conditional probabilities ``p_{j|i} = K(i, j) / sum_k K(i, k)`` with the
    cosine kernel ``K = (cos + 1) / 2``.

    ``exclude_self``: drop the diagonal (``j = i`` and ``k = i``), as the paper defines them;
    otherwise keep the whole matrix, as the authors' and RepDistiller's code do.
    """
    unit = F.normalize(embedding, p=2, dim=1)
    kernel = (unit @ unit.t() + 1.0) / 2.0
    if exclude_self:
        kernel = kernel * (1.0 - torch.eye(len(embedding), device=embedding.device, dtype=embedding.dtype))
    return kernel / kernel.sum(dim=1, keepdim=True).clamp(min=1e-12)  # a batch of one has no neighbours


def polynomial_mmd(student: Tensor, teacher: Tensor) -> Tensor:
    """Per-sample squared MMD ``(B,)`` between two sets of vectors with the kernel ``(x.y)^2``.

    ``student``: ``(B, Cs, D)``, ``teacher``: ``(B, Ct, D)``; each row is one channel's
    (already normalised) activation pattern, i.e. one sample of the distribution.
    """
    def mean_kernel(a: Tensor, b: Tensor) -> Tensor:
        return (a @ b.transpose(1, 2)).pow(2).mean(dim=(1, 2))

    return mean_kernel(student, student) + mean_kernel(teacher, teacher) - 2 * mean_kernel(student, teacher)


# --------------------------------------------------------------------------- review
def hierarchical_context_loss(student: Tensor, teacher: Tensor, pool_sizes: list[int]) -> Tensor:
    """ReviewKD's HCL for one level: full-resolution MSE plus MSEs of ``s x s`` average-pooled
    maps with weights halving per pyramid level, normalised by the total weight; pyramid
    levels not smaller than the map are skipped."""
    loss = F.mse_loss(student, teacher)
    weight, total = 1.0, 1.0
    for size in pool_sizes:
        if size >= teacher.shape[-2]:
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(student, size), F.adaptive_avg_pool2d(teacher, size))
        total += weight
    return loss / total


# --------------------------------------------------------------------------- svd
def zero_nonfinite_grad(x: Tensor) -> Tensor:
    """Replace non-finite gradients flowing into ``x`` by zeros.

    SVD gradients contain ``1 / (s_i^2 - s_j^2)`` and blow up for (near-)repeated
    singular values; the KD-SVD authors drop such gradients the same way.
    """
    if x.requires_grad:
        x.register_hook(lambda grad: torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0))
    return x


def right_singular_vectors(feature: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Top-``count`` singular values ``(B, count)`` and right singular vectors ``(B, C, count)``
    of each sample's feature matrix ``(H*W, C)``."""
    matrix = zero_nonfinite_grad(feature.flatten(2).transpose(1, 2))  # (B, HW, C)
    _, singular_values, vh = torch.linalg.svd(matrix, full_matrices=False)
    return singular_values[:, :count], vh[:, :count, :].transpose(1, 2)


def align_singular_vectors(student: Tensor, teacher: Tensor) -> Tensor:
    """For each teacher vector, the student vector with the largest |cosine|, sign-flipped to agree.

    ``student``: ``(B, C, Ks)``, ``teacher``: ``(B, C, Kt)``; returns ``(B, C, Kt)``.
    """
    cosine = student.transpose(1, 2) @ teacher  # (B, Ks, Kt)
    best = cosine.abs().argmax(dim=1, keepdim=True)  # (B, 1, Kt)
    selection = torch.zeros_like(cosine).scatter(1, best, torch.gather(cosine, 1, best).sign())
    return student @ selection


def singular_vector_rbf(current: Tensor, previous: Tensor, scale: float) -> Tensor:
    """``(B, C_cur, C_prev, K)`` radial basis relations ``exp(-(v_cur[c] - v_prev[c'])^2 / scale)``
    between the components of the k-th singular vectors of two layers."""
    return torch.exp(-(current.unsqueeze(2) - previous.unsqueeze(1)).pow(2) / scale)


# --------------------------------------------------------------------------- ofd
def gaussian_negative_margin(mean: Tensor, std: Tensor) -> Tensor:
    """OFD margin per channel: ``E[x | x < 0]`` for ``x ~ N(mean, std^2)``.

    ``= mean - std * phi(mean/std) / Phi(-mean/std)``; when ``P(x < 0) <= 0.001`` the
    expectation is unstable and ``-3 std`` is used instead (as in the paper's code).
    """
    std = std.abs().clamp(min=1e-12)
    ratio = mean / std
    negative_mass = torch.special.ndtr(-ratio)
    density = torch.exp(-ratio.pow(2) / 2) / math.sqrt(2 * math.pi)
    conditional = mean - std * density / negative_mass.clamp(min=1e-12)
    return torch.where(negative_mass > 0.001, conditional, -3 * std)
