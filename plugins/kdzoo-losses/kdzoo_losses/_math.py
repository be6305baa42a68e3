"""Shared math of the logit losses: one place for the temperature-scaled KL and friends.

Every function takes logits in any float dtype and works in fp32 (bf16 logits under
autocast lose too much precision once divided by a temperature and exponentiated).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def fp32(logits: Tensor) -> Tensor:
    return logits.float()


def teacher_fp32(logits: Tensor) -> Tensor:
    """Teacher logits as a constant: fp32 and cut from any graph (no gradient may reach a teacher)."""
    return logits.detach().float()


def kl_per_sample(teacher_log_probs: Tensor, student_log_probs: Tensor) -> Tensor:
    """KL(teacher || student) for each row, from log-probabilities (stable where teacher mass underflows)."""
    return F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True).sum(dim=1)


def tempered_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor) -> Tensor:
    """Per-sample ``T^2 * KL(softmax(t/T) || softmax(s/T))``.

    The T^2 factor keeps the gradient magnitude independent of T (Hinton et al. 2015).
    ``temperature`` may be a tensor (CTKD learns it).
    """
    student = F.log_softmax(fp32(student_logits) / temperature, dim=1)
    teacher = F.log_softmax(teacher_fp32(teacher_logits) / temperature, dim=1)
    return kl_per_sample(teacher, student) * temperature**2


def non_target_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """The ``(B, K-1)`` logits of the non-target classes, in class order.

    Dropping the target column is exact (the reference codes subtract 1000 from it
    instead); a gather rather than boolean indexing keeps it free of device syncs.
    """
    batch, num_classes = logits.shape
    columns = torch.arange(num_classes - 1, device=logits.device).expand(batch, -1)
    columns = columns + (columns >= targets.view(-1, 1)).long()  # skip over the target column
    return logits.gather(1, columns)


def target_vs_rest_log_probs(logits: Tensor, targets: Tensor) -> Tensor:
    """``(B, 2)`` log-probabilities of the binary split [target class, all other classes]."""
    log_norm = torch.logsumexp(logits, dim=1)
    log_target = logits.gather(1, targets.view(-1, 1)).squeeze(1) - log_norm
    log_rest = torch.logsumexp(non_target_logits(logits, targets), dim=1) - log_norm
    return torch.stack([log_target, log_rest], dim=1)


def pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation between matching rows of ``a`` and ``b`` (eps as in the DIST code)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def full_precision(like: Tensor):
    """A context where autocast is off on ``like``'s device: matrix products in it run in fp32.

    Autocast runs matmul / linear / einsum in bf16 even on fp32 inputs, which the losses'
    Gram matrices and KL-by-product terms cannot afford (a cancelling difference of two
    bf16 products can even turn a KL negative).
    """
    return torch.autocast(device_type=like.device.type, enabled=False)
