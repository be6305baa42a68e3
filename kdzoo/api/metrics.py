"""Metrics: streaming accumulators fed one evaluation batch at a time."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any, ClassVar

import torch
from torch import Tensor

from kdzoo.api.keys import ENSEMBLE
from kdzoo.api.models import Network


@dataclass
class EvalBatch:
    """One evaluation batch: every model's logits (and requested taps) on the same images."""

    logits: dict[str, Tensor]  # role -> logits: "model" in train runs; "student", "t1", ... in distill runs
    features: dict[str, dict[str, Tensor]]  # role -> tap path -> output
    targets: Tensor
    images: Tensor  # float in [0, 1] at dataset resolution
    networks: dict[str, Network]
    masks: Tensor | None = None  # (B, H, W) bool object masks, when the dataset has them
    teachers: tuple[str, ...] = ()  # the roles that are teachers
    student: str | None = None  # the role being trained ("model" or "student")


class Metric:
    """A streaming metric over one evaluation split: ``reset``, ``update`` per batch, ``compute``.

    ``compute`` returns flat ``{"name/role": value}`` figures (floats); values that are
    lists (for example reliability-diagram bins) are kept in the summary but not in
    the per-epoch table. Heavy metrics set ``final_only = True``.
    """

    final_only: ClassVar[bool] = False

    def __init__(self, params: Any = None):
        self.params = params

    def taps(self, networks: dict[str, Network]) -> dict[str, list[str]]:
        """Module paths to tap per role during evaluation."""
        return {}

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, batch: EvalBatch) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, Any]:
        raise NotImplementedError


def ensemble_logits(batch: EvalBatch) -> Tensor | None:
    """Mean of the teachers' logits (the study's ensemble), or None without teachers."""
    if not batch.teachers:
        return None
    return torch.stack([batch.logits[t].float() for t in batch.teachers]).mean(0)


def student_role(batch: EvalBatch) -> str | None:
    """The trained role when it is compared with teachers (None in a teachers-only batch)."""
    student = batch.student
    if student is None or student not in batch.logits or student in batch.teachers:
        return None
    return student


def role_logits(batch: EvalBatch, *, with_ensemble: bool = True) -> dict[str, Tensor]:
    """Every role's logits in fp32 (bf16 under autocast would distort softmax tails),
    plus the ensemble's (key ``ENSEMBLE``) when there are teachers and ``with_ensemble``."""
    logits = {role: value.float() for role, value in batch.logits.items()}
    if with_ensemble:
        ensemble = ensemble_logits(batch)
        if ensemble is not None:
            logits[ENSEMBLE] = ensemble
    return logits


def role_pairs(batch: EvalBatch, *, with_ensemble: bool = True) -> list[tuple[str, str]]:
    """The pairs a pairwise metric reports on, in this order: the student with each
    teacher (``student~t1``), the student with the ensemble, then every teacher pair
    (``t1~t2``, in the order of ``batch.teachers``). A train run has no pairs."""
    teachers = [t for t in batch.teachers if t in batch.logits]
    student = student_role(batch)
    pairs: list[tuple[str, str]] = []
    if student is not None:
        pairs += [(student, teacher) for teacher in teachers]
        if with_ensemble and teachers:
            pairs.append((student, ENSEMBLE))
    pairs += list(combinations(teachers, 2))
    return pairs
