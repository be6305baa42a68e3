"""The regime checks of a study: is it run where the paper's mechanism can appear?

- students that overfit: the CE-only baseline (same student, data and budget, no
  teachers) ends with a train - test top-1 gap of at least ``MIN_BASELINE_GAP``;
- teachers that know more: every teacher's test top-1 at least ``MIN_TEACHER_MARGIN``
  above the CE-only student's;
- strong teachers not crippled: the weakest and the strongest policy's teachers within
  ``MAX_TEACHER_SPREAD`` of each other in mean test top-1.

A study that fails a check still reports its findings; the check says why they may not
speak to the paper's claim.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from kdzoo.study.arms import Arm, TeacherRow
from kdzoo.study.quantities import QUANTITY, spread
from kdzoo.study.strength import StrengthScale
from kdzoo.tables import fmt, markdown_table

MIN_BASELINE_GAP = 0.15
MIN_TEACHER_MARGIN = 0.05
MAX_TEACHER_SPREAD = 0.05


@dataclass(frozen=True)
class Check:
    name: str
    requirement: str
    measured: str
    met: bool | None  # None: could not be measured

    @property
    def status(self) -> str:
        return "not measured" if self.met is None else "met" if self.met else "NOT met"


def teacher_top1_by_level(teacher_rows: list[TeacherRow], scale: StrengthScale) -> dict[str, list[float]]:
    """Test top-1 of each distinct teacher, by strength level."""
    by_level: dict[str, list[float]] = {}
    for row in teacher_rows:
        level = scale.level(row.policy)
        if level is not None and isinstance(row.top1, float):
            by_level.setdefault(level, []).append(row.top1)
    return by_level


def regime_checks(baseline: list[Arm], teacher_rows: list[TeacherRow], scale: StrengthScale) -> list[Check]:
    gap = spread(QUANTITY["gap_at_best"].extract(arm) for arm in baseline)
    top1 = spread(QUANTITY["test_top1"].extract(arm) for arm in baseline)
    checks = [Check(
        "students overfit", f"CE-only student's gap at best >= {MIN_BASELINE_GAP:.2f}",
        f"{gap.text()} over {gap.n} seeds" if gap.mean is not None else "no CE-only baseline (--baseline)",
        None if gap.mean is None else gap.mean >= MIN_BASELINE_GAP,
    )]
    teachers = [row.top1 for row in teacher_rows if isinstance(row.top1, float)]
    if top1.mean is None or not teachers:
        checks.append(Check("teachers know more", f"every teacher's test top-1 >= CE-only student's + {MIN_TEACHER_MARGIN:.2f}",
                            "needs the CE-only baseline and the teachers' test top-1", None))
    else:
        margin = min(teachers) - top1.mean
        checks.append(Check("teachers know more", f"every teacher's test top-1 >= CE-only student's + {MIN_TEACHER_MARGIN:.2f}",
                            f"weakest teacher {fmt(min(teachers))} vs CE-only student {top1.text()}: margin {margin:+.4f}",
                            margin >= MIN_TEACHER_MARGIN))
    by_level = teacher_top1_by_level(teacher_rows, scale)
    ends = [scale.weakest, scale.strongest]
    if None in ends or not all(by_level.get(level) for level in ends):
        checks.append(Check("strong teachers not crippled", f"weakest and strongest policy's teachers within {MAX_TEACHER_SPREAD:.2f}",
                            "needs teachers at two strengths", None))
    else:
        means = {level: statistics.fmean(by_level[level]) for level in scale.levels if by_level.get(level)}
        difference = means[scale.weakest] - means[scale.strongest]
        listed = ", ".join(f"{level} {fmt(value)}" for level, value in means.items())
        checks.append(Check("strong teachers not crippled", f"weakest and strongest policy's teachers within {MAX_TEACHER_SPREAD:.2f}",
                            f"mean teacher test top-1: {listed} (weakest - strongest {difference:+.4f})",
                            abs(difference) <= MAX_TEACHER_SPREAD))
    return checks


def regime_markdown(checks: list[Check]) -> str:
    return markdown_table(["check", "requirement", "measured", "status"], [[c.name, c.requirement, c.measured, c.status] for c in checks])
