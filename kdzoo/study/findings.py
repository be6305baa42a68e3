"""The study's findings: the four directions of ``shared/STUDY.md`` decided by
:mod:`kdzoo.study.stats`' rule on matched pairs, along the strength axis of
:mod:`kdzoo.study.strength`.

Each finding compares the strongest teacher policy with the weakest (both ends of the
axis); policies between them are reported as the dose-response, difference to the
weakest, without deciding on them. Student figures pair arms of the same teacher count,
student policy and seed. Teacher~teacher attention IoU is a property of the teacher pair,
not of the student, so finding 1 pairs *teacher pairs* (the same two teacher seeds under
each policy), each counted once however many students used it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations

from kdzoo.study.arms import Arm, Group
from kdzoo.study.quantities import QUANTITY, pair_value
from kdzoo.study.stats import CI_METHOD, HELD, INCONCLUSIVE, REVERSED, PairedEstimate, combine, decide, describe_mean, paired_estimate
from kdzoo.study.strength import StrengthScale

TeacherSeed = Callable[[Arm, str], "int | None"]
PairKey = tuple  # (teacher count, student policy, seed) for students; (seed_a, seed_b) for teacher pairs


@dataclass
class Part:
    """One quantity of a finding: strongest - weakest over matched pairs, and its verdict."""

    header: str
    expect: int  # -1: the paper predicts lower under the strongest policy, +1 higher
    estimate: PairedEstimate | None
    verdict: str
    dose: list[tuple[str, PairedEstimate | None]] = field(default_factory=list)  # middle levels - weakest

    def text(self, weakest: str, strongest: str) -> str:
        if self.estimate is None:
            return f"{self.header}: no matched pairs ({strongest} vs {weakest})"
        side = "lower" if self.expect < 0 else "higher"
        line = f"{self.header}, {strongest} - {weakest}: {self.estimate.text()} (paper: {side}) -> {self.verdict}"
        for level, estimate in self.dose:
            line += f"; {level} - {weakest}: {estimate.text() if estimate else 'no pairs'}"
        return line


@dataclass
class Finding:
    number: int
    claim: str
    lines: list[str]
    verdict: str  # held, reversed, inconclusive, or "not measured: ..."
    parts: list[Part] = field(default_factory=list)


def group_level(group: Group, scale: StrengthScale) -> str | None:
    """The strength level of a group whose teachers all share one; None for mixed sets."""
    levels = {scale.level(label) for label in group.teacher_policies}
    return levels.pop() if len(levels) == 1 and None not in levels else None


class Pairing:
    """Per-level values of one quantity, keyed so that equal keys are matched pairs."""

    def __init__(self, groups: list[Group], scale: StrengthScale, teacher_seed: TeacherSeed):
        self.scale = scale
        self.teacher_seed = teacher_seed
        self.by_level: dict[str, list[Group]] = {level: [] for level in scale.levels}
        for group in groups:
            level = group_level(group, scale)
            if level is not None:
                self.by_level[level].append(group)

    def student_values(self, key: str, count: int | None = None) -> dict[str, dict[PairKey, float]]:
        values: dict[str, dict[PairKey, float]] = {}
        for level, groups in self.by_level.items():
            for g in groups:
                if count is not None and g.n_teachers != count:
                    continue
                for arm in g.arms:
                    value = QUANTITY[key].extract(arm)
                    if value is not None:
                        values.setdefault(level, {})[(g.n_teachers, g.student_policy, arm.seed)] = value
        return values

    def teacher_pair_values(self, quantity: str = "attn_iou") -> dict[str, dict[PairKey, float]]:
        """Each distinct teacher pair's figure, keyed by the two teachers' seeds (the mean
        when several arms measured the same pair)."""
        seen: dict[str, dict[PairKey, list[float]]] = {}
        for level, groups in self.by_level.items():
            for g in groups:
                for arm in g.arms:
                    for a, b in combinations(arm.teacher_roles, 2):
                        value = pair_value(arm.final, "test", quantity, a, b)
                        seeds = (self.teacher_seed(arm, a), self.teacher_seed(arm, b))
                        if value is not None and None not in seeds:
                            seen.setdefault(level, {}).setdefault(tuple(sorted(seeds)), []).append(value)
        return {level: {k: sum(v) / len(v) for k, v in pairs.items()} for level, pairs in seen.items()}

    def set_values(self, key: str, level: str, count: int) -> list[float]:
        """One figure per distinct teacher set of a level and count (its first arm's)."""
        values = []
        for g in self.by_level.get(level, []):
            if g.n_teachers == count:
                found = [v for v in (QUANTITY[key].extract(arm) for arm in g.arms) if v is not None]
                values += found[:1]
        return values

    def counts(self) -> list[int]:
        ends = [self.by_level.get(level, []) for level in (self.scale.weakest, self.scale.strongest)]
        return sorted(set.intersection(*({g.n_teachers for g in side} for side in ends))) if all(ends) else []


def differences(values: dict[str, dict[PairKey, float]], level: str, reference: str) -> list[float]:
    mine, theirs = values.get(level, {}), values.get(reference, {})
    return [mine[k] - theirs[k] for k in sorted(mine, key=repr) if k in theirs]


def part(header: str, values: dict[str, dict[PairKey, float]], scale: StrengthScale, expect: int, not_worse: bool = False) -> Part:
    """strongest - weakest. ``not_worse``: the paper claims 'equal or better', so the part
    holds unless the interval shows it worse (reversed)."""
    weakest, strongest = scale.weakest, scale.strongest
    estimate = paired_estimate(differences(values, strongest, weakest))
    verdict = decide(estimate, expect)
    if not_worse and verdict == INCONCLUSIVE and estimate is not None and estimate.low is not None:
        verdict = HELD
    dose = [(level, paired_estimate(differences(values, level, weakest))) for level in scale.levels[1:-1]]
    return Part(header, expect, estimate, verdict, dose)


def findings(groups: list[Group], scale: StrengthScale, teacher_seed: TeacherSeed = lambda arm, role: None) -> list[Finding]:
    claims = {
        1: "Teachers trained with stronger augmentation have lower pairwise attention IoU.",
        2: "Students of stronger-augmentation ensembles have lower fidelity and mutual information with their teachers.",
        3: "The same students have a smaller generalisation gap and equal or better test accuracy.",
        4: "The effect grows with the number of teachers: the fidelity drop (weakest - strongest) is larger with more teachers.",
    }
    if scale.strongest is None:
        why = f"not measured: needs arms whose teachers all share one policy at two or more strengths (scale: {scale.source})"
        if scale.unplaced:  # the likely cause: the table names the policies otherwise
            why += f"; no affinity for {', '.join(scale.unplaced)}: measure them with `kdzoo affinity --policies ...`"
        return [Finding(n, claim, [], why) for n, claim in claims.items()]
    if scale.ambiguous:
        why = f"not measured: several policies in one class, {'; '.join(scale.ambiguous)}: order them by strength with --affinity"
        return [Finding(n, claim, [], why) for n, claim in claims.items()]
    pairing = Pairing(groups, scale, teacher_seed)
    weakest, strongest = scale.weakest, scale.strongest

    def finding(number: int, parts: list[Part]) -> Finding:
        measured = [p for p in parts if p.estimate is not None]
        verdict = combine([p.verdict for p in measured]) if measured else "not measured: no matched pairs"
        return Finding(number, claims[number], [p.text(weakest, strongest) for p in parts], verdict, parts)

    out = [finding(1, [part("attn IoU T~T (per teacher pair)", pairing.teacher_pair_values(), scale, -1)])]
    out.append(finding(2, [
        part(QUANTITY[key].header, pairing.student_values(key), scale, -1)
        for key in ("fidelity_student_ensemble", "fidelity_student_teacher", "mi_student_ensemble")
    ]))
    out.append(finding(3, [
        part(QUANTITY["gap_at_best"].header, pairing.student_values("gap_at_best"), scale, -1),
        part(QUANTITY["test_top1"].header + " (equal or better: held unless the CI is below 0)",
             pairing.student_values("test_top1"), scale, +1, not_worse=True),
    ]))
    out.append(teacher_count_finding(pairing, claims[4]))
    return out


def teacher_count_finding(pairing: Pairing, claim: str) -> Finding:
    """Finding 4: per teacher count n, the drop d_n = fidelity(weakest) - fidelity(strongest)
    per (student policy, seed); decided on d_max - d_min over the same (student policy,
    seed), which the paper predicts positive."""
    scale = pairing.scale
    counts = pairing.counts()
    drops: dict[int, dict[tuple, float]] = {}
    lines = []
    for n in counts:
        values = pairing.student_values("fidelity_student_ensemble", count=n)
        weak, strong = values.get(scale.weakest, {}), values.get(scale.strongest, {})
        drops[n] = {k[1:]: weak[k] - strong[k] for k in weak if k in strong}
        estimate = paired_estimate(drops[n][k] for k in sorted(drops[n], key=repr))
        diversity = ""
        if n >= 2:  # the teacher sets' own diversity (one value per set: students do not change it)
            diversity = "; attn IoU T~T " + ", ".join(f"{level} {describe_mean(pairing.set_values('attn_iou_teacher_teacher', level, n))}"
                                                      for level in (scale.weakest, scale.strongest))
        lines.append(f"{n} teacher{'s' if n > 1 else ''}: fidelity s~ens {scale.weakest} - {scale.strongest}: "
                     f"{estimate.text() if estimate else 'no pairs'}{diversity}")
    if len(counts) < 2:
        lines.append("needs arms at two or more teacher counts under both the weakest and the strongest policy")
        return Finding(4, claim, lines, "not measured: one teacher count")
    low, high = counts[0], counts[-1]
    contrast = paired_estimate(drops[high][k] - drops[low][k] for k in sorted(drops[high], key=repr) if k in drops[low])
    verdict = decide(contrast, +1)
    means = [paired_estimate(drops[n].values()) for n in counts]
    monotone = all(a is not None and b is not None and b.mean > a.mean for a, b in zip(means, means[1:]))
    lines.append(f"drop at {high} - drop at {low} teachers: {contrast.text() if contrast else 'no pairs'} (paper: higher) -> {verdict}; "
                 f"mean drops {'increase' if monotone else 'do not increase'} monotonically over {', '.join(map(str, counts))} teachers")
    return Finding(4, claim, lines, verdict if contrast is not None else "not measured: no matched pairs",
                   [Part("fidelity drop growth", +1, contrast, verdict)])


def findings_markdown(items: list[Finding]) -> str:
    parts = []
    for f in items:
        parts.append(f"{f.number}. {f.claim} **{f.verdict}**")
        parts += [f"   - {line}" for line in f.lines]
    return "\n".join(parts)


RULE = (
    f"Decision rule ({CI_METHOD} over matched pairs): **{HELD}** when the interval excludes 0 in the paper's "
    f"direction, **{REVERSED}** when it excludes 0 the other way, **{INCONCLUSIVE}** otherwise; d_z is the mean "
    "difference over the differences' std. A finding of several parts holds when every part holds and is reversed "
    "when any part is reversed."
)
