"""Metrics: streaming accumulators fed one evaluation batch at a time."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any, ClassVar

import torch
from torch import Tensor

from kdzoo.api.distributed import Reducer
from kdzoo.api.keys import ENSEMBLE
from kdzoo.api.models import Network


@dataclass
class EvalBatch:
    """One evaluation batch: every model's logits (and requested taps) on the same images.

    - ``logits``: role -> fp32 logits ``(B, num_classes)``: ``"model"`` in train runs;
      ``"student"`` and the teachers' names (``"t1"``, ...) in distill runs. There is no
      ``"ensemble"`` entry: ``role_logits`` / ``ensemble_logits`` compute it.
    - ``features``: role -> tap path -> the tapped module's raw output (a tuple output
      is kept as is), for the paths ``Metric.taps`` asked for (across all metrics of the
      run). A role that no metric asked taps of may be missing: use
      ``batch.features.get(role, {})``.
    - ``targets``: int64 ``(B,)`` labels.
    - ``images``: float ``(B, 3, H, W)`` in [0, 1] at dataset resolution (not
      normalised; augmented on the ``test_aug`` split).
    - ``networks``: role -> ``Network``, in eval mode (for metrics that run their own
      forwards, e.g. Grad-CAM).
    - ``masks``: ``(B, H, W)`` bool object masks, when the dataset has them (``None`` on
      the ``test_aug`` split, whose images are augmented).
    - ``teachers``: the roles that are teachers, in the spec's order (empty in a train run).
    - ``student``: the role being trained (``"model"`` or ``"student"``).
    - ``offset``: the position of the batch's first image in the split (batches are
      contiguous runs of the split, in order). ``None`` when the caller does not say
      (a metric then counts the images it has seen); under several processes a rank
      sees only some batches, so metrics with figures over runs of consecutive images
      place them by ``offset``.
    """

    logits: dict[str, Tensor]
    features: dict[str, dict[str, Tensor]]
    targets: Tensor
    images: Tensor
    networks: dict[str, Network]
    masks: Tensor | None = None
    teachers: tuple[str, ...] = ()
    student: str | None = None
    offset: int | None = None


class Metric:
    """A streaming metric over one evaluation split: ``reset``, ``update`` per batch, ``compute``.

    The core builds a fresh metric for every split of every evaluation, calls
    ``reset`` and ``taps``, then ``update`` once per batch (under ``torch.no_grad`` and
    the run's autocast) and ``compute`` once. ``compute`` returns flat
    ``{"quantity/role": value}`` figures (keys from ``role_key`` / ``pair_key``, without
    the split: the core prefixes ``train/``, ``test/`` or ``test_aug/``). Scalar
    figures (Python ``float`` or ``int``) are recorded per evaluated epoch in
    ``metrics.jsonl`` and, from the last epoch, in ``summary.json`` (``final``) and the
    checkpoint manifest; values that are lists (for example reliability-diagram bins)
    are kept only in ``summary.json``. The table ``kdzoo run`` prints has fixed columns
    (test ``top1``, ``fidelity`` to the ensemble, ``attn_object_iou`` and its
    ``attn_object_iou_random`` / ``attn_object_iou_disc`` baselines): a plugin's
    other figures are in the files, not in that table. Figures of all metrics share
    one namespace: use quantity names of your own. Heavy metrics set
    ``final_only = True``.

    Several processes (``torchrun``, ``kdzoo run --nproc N``): the evaluator gives each
    rank whole evaluation batches (batch ``i`` to rank ``i % world_size``; ``offset``
    says where a batch sits in the split), then calls ``reduce`` once on every rank
    before ``compute``, so that each rank's accumulators become those of the whole
    split. Whole batches keep every per-batch quantity what it is in one process; the
    figures equal a single-process evaluation's, exactly for counts and up to float
    summation order (about 1e-15 relative in float64) for sums. A single process never
    calls ``reduce``.

    - ``params``: the validated instance of the component's params model (what the
      factory received; ``self.params``).
    - ``final_only``: ``True`` for metrics too costly for every evaluation: they run
      only after the last epoch.
    """

    final_only: ClassVar[bool] = False

    def __init__(self, params: Any = None):
        self.params = params

    def taps(self, networks: dict[str, Network]) -> dict[str, list[str]]:
        """Module paths to tap per role during evaluation."""
        return {}

    def reset(self) -> None:
        """Create (or clear) the accumulated state; called before ``taps`` and the first ``update``."""
        raise NotImplementedError

    def update(self, batch: EvalBatch) -> None:
        """Accumulate one evaluation batch (it must cope with a train run: one role, no teachers)."""
        raise NotImplementedError

    def compute(self) -> dict[str, Any]:
        """The figures over every batch seen since ``reset``: ``{"quantity/role": float, ...}``."""
        raise NotImplementedError

    def reduce(self, reducer: Reducer) -> None:
        """Combine this rank's state with every other rank's, in place (several processes only).

        The default sums the state, attribute by attribute (``vars(self)``, in name
        order), with ``reducer.sum``: tensors, ``int``/``float`` and dicts of those are
        summed over ranks (a dict key missing on a rank counts as zero); an attribute
        with a ``reduce(reducer)`` method of its own (an accumulator object) is asked to
        reduce itself; ``params``, ``None``, ``str``, ``bool``, devices and dtypes are
        configuration and stay as they are. Anything else (a list of per-batch values,
        images kept from the first batches) is not a sum: the default raises
        ``TypeError`` naming the attribute, and the metric overrides ``reduce``
        (``reducer.gather`` gives every rank's value, in rank order). Create every
        attribute in ``reset``: a rank may see no batch at all.
        """
        summed: dict[str, Any] = {}
        for name, value in sorted(vars(self).items()):
            if name == "params" or value is None or isinstance(value, (str, bool, torch.device, torch.dtype)):
                continue
            if isinstance(value, (Tensor, int, float, dict)):
                summed[name] = value
            elif callable(getattr(value, "reduce", None)):
                value.reduce(reducer)
            else:
                raise TypeError(
                    f"{type(self).__name__}.{name} ({type(value).__name__}) is not a sum of per-rank parts: "
                    "override Metric.reduce to combine it across processes"
                )
        for name, value in reducer.sum(summed).items():
            setattr(self, name, value)


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
