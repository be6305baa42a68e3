"""The predicted class and the top-k classes: one tie rule for every metric of this plugin.

Tie rule: among classes with equal logits, **the lowest class index wins**.

- :func:`predicted_class` is ``argmax`` over classes, which returns the first maximal
  index (on CPU and CUDA alike);
- :func:`top_classes` is a *stable* descending sort, so equal logits keep their index
  order and its first column is :func:`predicted_class` on every row, ties included.

``Tensor.topk`` gives no such guarantee: on tied logits (integer-valued or bf16-rounded
logits have many) it may put any of the tied classes first, so a top-1 accuracy from
``topk`` and a fidelity from ``argmax`` could count the same row differently. Top-1
accuracy, fidelity, mutual information, calibration and the attention maps' class
choice all go through this module.
"""

from __future__ import annotations

import torch
from torch import Tensor


def predicted_class(logits: Tensor) -> Tensor:
    """``(B,)`` int64: the class of the largest logit per row of ``(B, K)`` logits; on
    ties the lowest class index."""
    return logits.argmax(dim=1)


def top_classes(logits: Tensor, k: int) -> Tensor:
    """``(B, k)`` int64: the ``k`` classes of the largest logits per row, in descending
    order of logit, equal logits in ascending class index; column 0 is
    :func:`predicted_class`. ``k`` is at most the number of classes."""
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"top_classes needs 1 <= k <= {logits.shape[1]} classes, got k={k}")
    return torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :k]


__all__ = ["predicted_class", "top_classes"]
