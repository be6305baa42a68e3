"""The study's quantities: per-arm figures read from a run's summary (the QUANTITIES
table), their mean and spread over an arm group's seeds, and the arms table and
study.csv built from them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from kdzoo.api.keys import ENSEMBLE, metric_key, pair_metric_key
from kdzoo.run.checkpoint import write_csv
from kdzoo.study.arms import Arm, Group
from kdzoo.tables import fmt, markdown_table


# ----------------------------------------------------------------------------- quantities
def finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def pair_value(final: dict[str, Any], split: str, quantity: str, left: str, right: str) -> float | None:
    """A pair figure whichever way round the metric keyed it."""
    value = final.get(pair_metric_key(split, quantity, left, right), final.get(pair_metric_key(split, quantity, right, left)))
    return finite(value)


def mean_or_none(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def student_ensemble(quantity: str, split: str = "test") -> Callable[[Arm], float | None]:
    def extract(arm: Arm) -> float | None:
        return pair_value(arm.final, split, quantity, arm.role, ENSEMBLE) if arm.teacher_roles else None

    return extract


def student_teacher_mean(quantity: str, split: str = "test") -> Callable[[Arm], float | None]:
    def extract(arm: Arm) -> float | None:
        return mean_or_none(pair_value(arm.final, split, quantity, arm.role, t) for t in arm.teacher_roles)

    return extract


def teacher_teacher_mean(quantity: str, split: str = "test") -> Callable[[Arm], float | None]:
    def extract(arm: Arm) -> float | None:
        return mean_or_none(pair_value(arm.final, split, quantity, a, b) for a, b in combinations(arm.teacher_roles, 2))

    return extract


def own(quantity: str, split: str = "test") -> Callable[[Arm], float | None]:
    def extract(arm: Arm) -> float | None:
        return finite(arm.final.get(metric_key(split, quantity, arm.role)))

    return extract


def summary_field(name: str) -> Callable[[Arm], float | None]:
    return lambda arm: finite(arm.summary.get(name))


def train_top1_at_best(arm: Arm) -> float | None:
    """Train top-1 of the epoch with the best test top-1 (the gap's left-hand side)."""
    best = arm.summary.get("best_epoch")
    for record in arm.records:
        if record.get("epoch") == best:
            return finite(record.get(metric_key("train", "top1", arm.role)))
    return None


@dataclass(frozen=True)
class Quantity:
    key: str  # study.csv column stem
    header: str  # study.md column
    extract: Callable[[Arm], float | None]


# The STUDY.md quantities, test split unless the name says otherwise.
QUANTITIES = [
    Quantity("test_top1", "test top-1", own("top1")),
    Quantity("train_top1_at_best", "train top-1 @best", train_top1_at_best),
    Quantity("gap_at_best", "gap @best", summary_field("gap_at_best")),
    Quantity("gap_final", "gap final", summary_field("gap_final")),
    Quantity("fidelity_student_ensemble", "fid s~ens", student_ensemble("fidelity")),
    Quantity("fidelity_student_ensemble_train", "fid s~ens train", student_ensemble("fidelity", "train")),
    Quantity("fidelity_student_ensemble_test_aug", "fid s~ens test_aug", student_ensemble("fidelity", "test_aug")),
    Quantity("fidelity_student_teacher", "fid s~T mean", student_teacher_mean("fidelity")),
    Quantity("fidelity_teacher_teacher", "fid T~T", teacher_teacher_mean("fidelity")),
    Quantity("kl_student_ensemble", "KL(ens ‖ s)", student_ensemble("kl")),  # kl/student~ensemble: teacher side the reference
    Quantity("mi_student_ensemble", "MI s~ens", student_ensemble("mi")),
    Quantity("nmi_student_ensemble", "NMI s~ens", student_ensemble("nmi")),
    Quantity("mi_per_batch_student_ensemble", "MI/batch s~ens", student_ensemble("mi_per_batch")),
    Quantity("entropy_student", "entropy s", own("entropy")),
    Quantity("ece10_student", "ECE s (10 bins, weighted)", own("ece10")),  # not the authors' ece10_bin_mean
    Quantity("attn_iou_teacher_teacher", "attn IoU T~T", teacher_teacher_mean("attn_iou")),
    Quantity("attn_iou_student_teacher", "attn IoU s~T", student_teacher_mean("attn_iou")),
    Quantity("attn_object_iou_student", "attn obj IoU s", own("attn_object_iou")),
    Quantity("attn_object_iou_random_student", "attn obj IoU s (random)", own("attn_object_iou_random")),
    Quantity("attn_object_iou_disc_student", "attn obj IoU s (disc)", own("attn_object_iou_disc")),
]
QUANTITY = {q.key: q for q in QUANTITIES}


@dataclass(frozen=True)
class Spread:
    mean: float | None
    std: float | None  # sample std; None below two values
    n: int

    def text(self) -> str:
        if self.mean is None:
            return ""
        return fmt(self.mean) if self.std is None else f"{fmt(self.mean)} ± {fmt(self.std)}"


def spread(values: Iterable[float | None]) -> Spread:
    kept = [v for v in values if v is not None]
    if not kept:
        return Spread(None, None, 0)
    return Spread(statistics.fmean(kept), statistics.stdev(kept) if len(kept) > 1 else None, len(kept))


def group_spread(group: Group, key: str) -> Spread:
    return spread(QUANTITY[key].extract(arm) for arm in group.arms)


# ----------------------------------------------------------------------------- tables
DESCRIPTIVE_HEADERS = ["arm group", "teachers", "teacher policies", "student policy"]
SHOWN_WITH_SPREAD = {"test_top1"}  # the rest: means in study.md, std in study.csv


def describe(group: Group) -> list[Any]:
    return [group.label, group.n_teachers, "+".join(group.teacher_policies), group.student_policy]


def study_table(groups: list[Group]) -> str:
    headers = DESCRIPTIVE_HEADERS + [q.header for q in QUANTITIES] + ["seeds"]
    rows = []
    for group in groups:
        cells = []
        for q in QUANTITIES:
            s = group_spread(group, q.key)
            cells.append(s.text() if q.key in SHOWN_WITH_SPREAD else s.mean)
        rows.append(describe(group) + cells + [len(group.seeds)])
    return markdown_table(headers, rows)


def write_study_csv(groups: list[Group], path: Path) -> None:
    headers = ["group", "n_teachers", "teacher_policies", "student_policy", "seeds", "seed_list", "arms"]
    for q in QUANTITIES:
        headers += [f"{q.key}_mean", f"{q.key}_std"]
    rows: list[list[Any]] = [headers]
    for group in groups:
        row: list[Any] = describe(group)[:4] + [len(group.seeds), " ".join(map(str, group.seeds)), " ".join(a.name for a in group.arms)]
        for q in QUANTITIES:
            s = group_spread(group, q.key)
            row += ["" if s.mean is None else repr(s.mean), "" if s.std is None else repr(s.std)]
        rows.append(row)
    write_csv(path, rows)
