"""The study's findings: the four directions of ``shared/STUDY.md`` tested from the
numbers, comparing arms whose teachers were all trained with strong augmentation against
arms whose teachers were all trained with weak.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kdzoo.study.arms import Arm, Group
from kdzoo.study.quantities import QUANTITY, Spread, spread
from kdzoo.tables import fmt

# Policy names as the study classes them; `kdzoo report --strong/--weak` overrides these.
STRONG_POLICIES = ("strong", "paper-strong", "randaugment", "autoaugment")
WEAK_POLICIES = ("weak", "paper-weak", "none")


def policy_class(name: str, strong: Iterable[str], weak: Iterable[str]) -> str | None:
    return "strong" if name in strong else "weak" if name in weak else None


def teacher_class(group: Group, strong: Iterable[str], weak: Iterable[str]) -> str | None:
    """'strong' / 'weak' when every teacher's policy is of that class; else None (mixed, unknown)."""
    classes = {policy_class(p, strong, weak) for p in group.teacher_policies}
    return classes.pop() if len(classes) == 1 and None not in classes else None


@dataclass
class Side:
    """The arms (seed runs) of one side of a comparison and their values of one quantity."""

    name: str
    arms: list[Arm]
    key: str

    @property
    def spread(self) -> Spread:
        return spread(QUANTITY[self.key].extract(arm) for arm in self.arms)

    @property
    def seeds(self) -> int:
        return len({arm.seed for arm in self.arms if QUANTITY[self.key].extract(arm) is not None})

    def text(self) -> str:
        s = self.spread
        return f"{self.name} {s.text()} ({s.n} arms, {self.seeds} seeds)"


@dataclass
class Finding:
    number: int
    claim: str
    lines: list[str]
    verdict: str  # "held", "did not hold", "not measured", "not called: ..."


def compare(strong: Side, weak: Side, expect: str, tolerance: bool = False, pairs: list[float] | None = None) -> tuple[str, str]:
    """(text, verdict) for `strong <expect> weak`; expect is '<' or '>='.

    The pooled line compares all strong-teacher arms with all weak-teacher arms; its
    spread mixes student policies and teacher counts. When ``pairs`` holds at least two
    matched differences (strong - weak, same teacher count, student policy and seed),
    the verdict follows their mean instead. With ``tolerance``, '>=' means 'equal or
    better': strong is not below weak by more than one standard deviation.
    """
    a, b = strong.spread, weak.spread
    header = f"{QUANTITY[strong.key].header}: {strong.text()} vs {weak.text()}"
    if a.mean is None or b.mean is None:
        return header + " (not measured)", "not measured"
    relation = "strong < weak" if expect == "<" else "strong >= weak"
    if pairs is not None and len(pairs) >= 2:
        d = spread(pairs)
        agree = sum((x < 0) if expect == "<" else (x >= 0) for x in pairs)
        held = d.mean < 0 if expect == "<" else d.mean >= -(d.std or 0.0) if tolerance else d.mean >= 0
        evidence = (
            f"; matched pairs strong - weak: {d.mean:+.4f} ± {fmt(d.std)} over {d.n} pairs, "
            f"{agree}/{d.n} with {relation}"
        )
        within = abs(d.mean) < (d.std or 0.0)
    else:
        if expect == "<":
            held = a.mean < b.mean
        else:
            slack = max(a.std or 0.0, b.std or 0.0) if tolerance else 0.0
            held = a.mean >= b.mean - slack
        evidence = ""
        within = abs(a.mean - b.mean) < max(a.std or 0.0, b.std or 0.0)
    verdict = "held" if held else "did not hold"
    if min(strong.seeds, weak.seeds) < 2:
        verdict = f"not called: fewer than two seeds (direction {verdict})"
    # A difference smaller than its spread is weak evidence: say so.
    note = " (the difference is within one standard deviation)" if within else ""
    return f"{header}{evidence}: {relation} {verdict}{note}", verdict


def combined(verdicts: list[str]) -> str:
    measured = [v for v in verdicts if v != "not measured"]
    if not measured:
        return "not measured"
    if any(v.startswith("not called") for v in measured):
        return "not called: fewer than two seeds"
    return "held" if all(v == "held" for v in measured) else "did not hold"


def findings(groups: list[Group], strong: Iterable[str] = STRONG_POLICIES, weak: Iterable[str] = WEAK_POLICIES) -> list[Finding]:
    strong, weak = tuple(strong), tuple(weak)
    by_class: dict[str, list[Group]] = {"strong": [], "weak": []}
    for group in groups:
        cls = teacher_class(group, strong, weak)
        if cls is not None:
            by_class[cls].append(group)

    def sides(key: str, teachers_at_least: int = 1, teachers_exactly: int | None = None) -> tuple[Side, Side]:
        def arms(cls: str) -> list[Arm]:
            return [
                arm
                for g in by_class[cls]
                if g.n_teachers >= teachers_at_least and (teachers_exactly is None or g.n_teachers == teachers_exactly)
                for arm in g.arms
            ]

        return Side("strong", arms("strong"), key), Side("weak", arms("weak"), key)

    def pairs(key: str, teachers_at_least: int = 1, teachers_exactly: int | None = None) -> list[float]:
        """strong - weak for arms matched on teacher count, student policy and seed."""
        values: dict[tuple[str, int, str, int], float] = {}
        for cls, class_groups in by_class.items():
            for g in class_groups:
                if g.n_teachers < teachers_at_least or (teachers_exactly is not None and g.n_teachers != teachers_exactly):
                    continue
                for arm in g.arms:
                    value = QUANTITY[key].extract(arm)
                    if value is not None:
                        values[(cls, g.n_teachers, g.student_policy, arm.seed)] = value
        return [values[("strong", *k[1:])] - v for k, v in values.items() if k[0] == "weak" and ("strong", *k[1:]) in values]

    out = []
    line, verdict = compare(*sides("attn_iou_teacher_teacher", teachers_at_least=2), "<", pairs=pairs("attn_iou_teacher_teacher", teachers_at_least=2))
    out.append(Finding(1, "Teachers trained with strong augmentation have lower pairwise attention IoU than weak ones.", [line], verdict))

    lines, verdicts = [], []
    for key in ("fidelity_student_ensemble", "fidelity_student_teacher", "mi_student_ensemble"):
        line, verdict = compare(*sides(key), "<", pairs=pairs(key))
        lines.append(line)
        verdicts.append(verdict)
    out.append(Finding(2, "Students of strong-augmentation ensembles have lower fidelity and mutual information with their teachers.", lines, combined(verdicts)))

    gap_line, gap_verdict = compare(*sides("gap_at_best"), "<", pairs=pairs("gap_at_best"))
    top1_line, top1_verdict = compare(*sides("test_top1"), ">=", tolerance=True, pairs=pairs("test_top1"))
    out.append(
        Finding(
            3,
            "The same students have a smaller generalisation gap and equal or better test accuracy "
            "(equal: strong not below weak by more than the larger spread).",
            [gap_line, top1_line],
            combined([gap_verdict, top1_verdict]),
        )
    )
    out.append(teacher_count_finding(by_class, sides, pairs))
    return out


def teacher_count_finding(by_class: dict[str, list[Group]], sides: Callable[..., tuple[Side, Side]], pairs: Callable[..., list[float]]) -> Finding:
    """Finding 4: the weak-minus-strong fidelity drop per number of teachers must be positive
    (finding 2's direction) and grow with it; matched pairs when there are two or more."""
    claim = "The effect grows with the number of teachers: the weak-minus-strong fidelity drop increases from 1T to 2T to 3T."
    counts = sorted({g.n_teachers for g in by_class["strong"]} & {g.n_teachers for g in by_class["weak"]})
    lines, drops, thin = [], [], False
    for n in counts:
        strong_side, weak_side = sides("fidelity_student_ensemble", teachers_exactly=n)
        s, w = strong_side.spread, weak_side.spread
        if s.mean is None or w.mean is None:
            continue
        matched = pairs("fidelity_student_ensemble", teachers_exactly=n)
        drops.append(-statistics.fmean(matched) if len(matched) >= 2 else w.mean - s.mean)
        thin |= min(strong_side.seeds, weak_side.seeds) < 2
        diversity = sides("attn_iou_teacher_teacher", teachers_exactly=n)[0].spread
        extra = f"; strong teachers' attn IoU T~T {diversity.text()}" if diversity.mean is not None else ""
        lines.append(f"{n} teachers: fidelity s~ens weak - strong = {fmt(drops[-1])} ({weak_side.text()}; {strong_side.text()}){extra}")
    if len(drops) < 2:
        lines.append("needs strong- and weak-teacher arms at two or more teacher counts")
        return Finding(4, claim, lines, "not measured")
    held = drops[0] > 0 and all(later > earlier for earlier, later in zip(drops, drops[1:]))
    verdict = "held" if held else "did not hold"
    if thin:
        verdict = f"not called: fewer than two seeds (direction {verdict})"
    return Finding(4, claim, lines, verdict)


def findings_markdown(items: list[Finding]) -> str:
    parts = []
    for f in items:
        parts.append(f"{f.number}. {f.claim} **{f.verdict}**")
        parts += [f"   - {line}" for line in f.lines]
    return "\n".join(parts)
