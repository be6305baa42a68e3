"""``kdzoo report``: the study's tables, findings and plots from finished runs.

Reads a grid directory (``RUN_DIR/arms/<arm>/``) or a single run directory: each
run's ``spec.yaml`` (resolved spec), ``summary.json`` and ``metrics.jsonl``. Arms that
differ only by seed form one *arm group*; every figure of a group is the mean over its
seeds, with the sample standard deviation beside it.

Writes ``study.csv`` (every mean and std), ``study.md`` (arms table, teachers table,
findings, plots) and PNG plots. The findings test the four directions of
``shared/STUDY.md`` from the numbers, comparing arms whose teachers were all trained
with strong augmentation against arms whose teachers were all trained with weak.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import re
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import yaml

from kdzoo.errors import KdzooError
from kdzoo import rundir
from kdzoo.api.keys import ENSEMBLE
from kdzoo.rundir import METRICS_FILE, SPEC_FILE, SUMMARY_FILE
from kdzoo.tables import fmt, markdown_table


# Policy names as the study classes them; `kdzoo report --strong/--weak` overrides these.
STRONG_POLICIES = ("strong", "paper-strong", "randaugment", "autoaugment")
WEAK_POLICIES = ("weak", "paper-weak", "none")

# The seed part of an arm name as `kdzoo run` builds it from `matrix: {seed: [...]}`.
SEED_PART = re.compile(r"(?:^|_)seed\d+(?=_|$)")

OVERLAY_ROWS = 4  # test images per attention-overlay figure


# ----------------------------------------------------------------------------- runs
@dataclass
class Arm:
    """One finished run: its resolved spec, summary and per-epoch records."""

    name: str
    path: Path
    spec: dict[str, Any]
    summary: dict[str, Any]
    records: list[dict[str, Any]]

    @property
    def role(self) -> str:
        return self.summary["role"]

    @property
    def final(self) -> dict[str, Any]:
        return self.summary.get("final", {})

    @property
    def seed(self) -> int:
        return int(self.spec.get("seed", self.summary.get("seed", 0)))

    @property
    def teacher_roles(self) -> list[str]:
        return list(self.summary.get("teachers", {}))


def is_run_dir(path: Path) -> bool:
    return rundir.is_finished(path)


def read_arm(path: Path, name: str | None = None) -> Arm:
    metrics = path / METRICS_FILE
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    return Arm(
        name=name or path.name,
        path=path,
        spec=yaml.safe_load((path / SPEC_FILE).read_text()) or {},
        summary=json.loads((path / SUMMARY_FILE).read_text()),
        records=records,
    )


def load_arms(run_dir: Path, log: Callable[[str], None] = print) -> list[Arm]:
    """Every finished arm of a grid (sorted by name), or the one run of a run directory."""
    run_dir = Path(run_dir)
    arms_dir = run_dir / "arms"
    if arms_dir.is_dir():
        arms = []
        for path in sorted(p for p in arms_dir.iterdir() if p.is_dir()):
            if is_run_dir(path):
                arms.append(read_arm(path))
            else:
                log(f"skipped {path.name}: not finished (no {SUMMARY_FILE})")
        if not arms:
            raise KdzooError(f"{run_dir}: no finished arm under {arms_dir}")
        return arms
    if is_run_dir(run_dir):
        name = (yaml.safe_load((run_dir / SPEC_FILE).read_text()) or {}).get("name") or run_dir.name
        return [read_arm(run_dir, name)]
    raise KdzooError(f"{run_dir} is neither a grid directory (arms/) nor a finished run directory ({SUMMARY_FILE} and {SPEC_FILE})")


# ----------------------------------------------------------------------------- groups
def seedless_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec without what differs between the seeds of one arm: its name and every seed
    (inline teachers' seeds follow the run's seed unless set)."""
    spec = copy.deepcopy(spec)
    for key in ("name", "seed", "matrix"):
        spec.pop(key, None)
    for teacher in spec.get("teachers") or []:
        if isinstance(teacher.get("train"), dict):
            teacher["train"].pop("seed", None)
    return spec


def group_label(arm_name: str) -> str:
    return SEED_PART.sub("", arm_name).strip("_")


@dataclass
class Group:
    """Arms that differ only by seed."""

    label: str
    arms: list[Arm]
    teacher_policies: list[str] = field(default_factory=list)  # per teacher, in spec order
    student_policy: str = ""

    @property
    def seeds(self) -> list[int]:
        return sorted({arm.seed for arm in self.arms})

    @property
    def n_teachers(self) -> int:
        return len(self.teacher_policies)


def group_arms(arms: list[Arm], teacher_policy: Callable[[Arm, str], str], fallback_label: str = "run") -> list[Group]:
    """Group by the seedless spec; a label left empty (a grid over seeds only) becomes ``fallback_label``."""
    groups: dict[str, Group] = {}
    labels: set[str] = set()
    for arm in arms:
        key = json.dumps(seedless_spec(arm.spec), sort_keys=True, default=str)
        if key not in groups:
            label = group_label(arm.name) or fallback_label
            if label in labels:  # distinct specs whose names differ only by seed parts
                label = arm.name
            labels.add(label)
            groups[key] = Group(
                label=label,
                arms=[],
                teacher_policies=[teacher_policy(arm, role) for role in arm.teacher_roles],
                student_policy=(arm.spec.get("augmentation") or {}).get("name", ""),
            )
        groups[key].arms.append(arm)
    return list(groups.values())


# ----------------------------------------------------------------------------- teachers
class TeacherIndex:
    """The teachers the arms used, read once each from their checkpoint manifests."""

    def __init__(self) -> None:
        self.manifests: dict[str, dict[str, Any]] = {}

    def manifest(self, arm: Arm, role: str) -> dict[str, Any]:
        source = arm.summary["teachers"][role].get("checkpoint", "")
        if source not in self.manifests:
            try:
                _, self.manifests[source] = rundir.resolve_checkpoint(source)
            except KdzooError:
                self.manifests[source] = {}  # moved or deleted: the arm's own figures still serve
        return self.manifests[source]

    def policy(self, arm: Arm, role: str) -> str:
        manifest = self.manifest(arm, role)
        if manifest:
            return ((manifest.get("spec") or {}).get("augmentation") or {}).get("name", "")
        for teacher in arm.spec.get("teachers") or []:  # checkpoint gone: the inline train spec
            if teacher.get("name") == role and isinstance(teacher.get("train"), dict):
                return (teacher["train"].get("augmentation") or {}).get("name", "")
        return ""

    def table(self, arms: list[Arm]) -> tuple[list[str], list[list[Any]]]:
        """One row per distinct teacher checkpoint: policy, seed, test top-1, ECE (10 bins)."""
        rows: dict[str, list[Any]] = {}
        used: dict[str, set[str]] = {}
        for arm in arms:
            for role in arm.teacher_roles:
                source = arm.summary["teachers"][role].get("checkpoint", "")
                used.setdefault(source, set()).add(arm.name)
                if source in rows:
                    continue
                manifest = self.manifest(arm, role)
                own = manifest.get("metrics", {})
                # A teacher trained without some metric is still measured, frozen, by the arm.
                top1 = own.get("test/top1/model", arm.final.get(f"test/top1/{role}"))
                ece = own.get("test/ece10/model", arm.final.get(f"test/ece10/{role}"))
                rows[source] = [Path(source).name or source, role, self.policy(arm, role), manifest.get("seed"), top1, ece]
        headers = ["teacher", "role", "policy", "seed", "test top-1", "ECE (10 bins)", "used by arms"]
        table = [row + [len(used[source])] for source, row in rows.items()]
        table.sort(key=lambda row: (str(row[1]), str(row[2]), row[3] if row[3] is not None else -1))
        return headers, table


# ----------------------------------------------------------------------------- quantities
def finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def pair_value(final: dict[str, Any], split: str, quantity: str, left: str, right: str) -> float | None:
    """A pair figure whichever way round the metric keyed it."""
    value = final.get(f"{split}/{quantity}/{left}~{right}", final.get(f"{split}/{quantity}/{right}~{left}"))
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
        return finite(arm.final.get(f"{split}/{quantity}/{arm.role}"))

    return extract


def summary_field(name: str) -> Callable[[Arm], float | None]:
    return lambda arm: finite(arm.summary.get(name))


def train_top1_at_best(arm: Arm) -> float | None:
    """Train top-1 of the epoch with the best test top-1 (the gap's left-hand side)."""
    best = arm.summary.get("best_epoch")
    for record in arm.records:
        if record.get("epoch") == best:
            return finite(record.get(f"train/top1/{arm.role}"))
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
    Quantity("kl_student_ensemble", "KL s~ens", student_ensemble("kl")),
    Quantity("mi_student_ensemble", "MI s~ens", student_ensemble("mi")),
    Quantity("nmi_student_ensemble", "NMI s~ens", student_ensemble("nmi")),
    Quantity("mi_per_batch_student_ensemble", "MI/batch s~ens", student_ensemble("mi_per_batch")),
    Quantity("entropy_student", "entropy s", own("entropy")),
    Quantity("ece10_student", "ECE10 s", own("ece10")),
    Quantity("attn_iou_teacher_teacher", "attn IoU T~T", teacher_teacher_mean("attn_iou")),
    Quantity("attn_iou_student_teacher", "attn IoU s~T", student_teacher_mean("attn_iou")),
    Quantity("attn_object_iou_student", "attn obj IoU s", own("attn_object_iou")),
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
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(headers)
        for group in groups:
            row: list[Any] = describe(group)[:4] + [len(group.seeds), " ".join(map(str, group.seeds)), " ".join(a.name for a in group.arms)]
            for q in QUANTITIES:
                s = group_spread(group, q.key)
                row += ["" if s.mean is None else repr(s.mean), "" if s.std is None else repr(s.std)]
            writer.writerow(row)


# ----------------------------------------------------------------------------- findings
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


# ----------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


AXIS_LABELS = {
    "fidelity_student_ensemble": "fidelity student~ensemble (test top-1 agreement)",
    "test_top1": "student test top-1",
    "attn_iou_teacher_teacher": "teacher~teacher attention IoU (test)",
    "gap_at_best": "generalisation gap (train - test top-1 at best epoch)",
}


def _scatter_groups(groups: list[Group], x_key: str, y_key: str, path: Path, title: str) -> Path | None:
    """One point per arm group at its means, error bars one std over seeds each way."""
    points = [(g.label, group_spread(g, x_key), group_spread(g, y_key)) for g in groups]
    points = [(label, x, y) for label, x, y in points if x.mean is not None and y.mean is not None]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for label, x, y in points:
        ax.errorbar(x.mean, y.mean, xerr=x.std or 0.0, yerr=y.std or 0.0, fmt="o", capsize=3, label=label)
        ax.annotate(label, (x.mean, y.mean), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(AXIS_LABELS.get(x_key, QUANTITY[x_key].header))
    ax.set_ylabel(AXIS_LABELS.get(y_key, QUANTITY[y_key].header))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_accuracy_vs_fidelity(groups: list[Group], path: Path) -> Path | None:
    return _scatter_groups(groups, "fidelity_student_ensemble", "test_top1", path, "Student accuracy vs fidelity (test; bars: std over seeds)")


def plot_attention_vs_gap(groups: list[Group], path: Path) -> Path | None:
    return _scatter_groups(groups, "attn_iou_teacher_teacher", "gap_at_best", path, "Teacher attention IoU vs generalisation gap")


def plot_reliability(arm: Arm, path: Path, split: str = "test", bins: int = 10) -> Path | None:
    """Reliability diagrams of the student and each teacher of one arm."""
    roles = [r for r in [arm.role, *arm.teacher_roles] if isinstance(arm.final.get(f"{split}/reliability{bins}/{r}"), list)]
    if not roles:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(roles), figsize=(3.2 * len(roles), 3.4), squeeze=False)
    for ax, role in zip(axes[0], roles):
        filled = [b for b in arm.final[f"{split}/reliability{bins}/{role}"] if b["count"]]
        ax.bar([(b["lower"] + b["upper"]) / 2 for b in filled], [b["accuracy"] for b in filled], width=1 / bins, edgecolor="black", alpha=0.7)
        ax.plot([0, 1], [0, 1], "--", color="grey")
        ece = arm.final.get(f"{split}/ece{bins}/{role}")
        ax.set_title(f"{role} (ECE {fmt(ece, 3)})" if ece is not None else role, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
    axes[0][0].set_ylabel("accuracy")
    fig.suptitle(f"Reliability ({split}, {bins} bins): {arm.name}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_attention_overlays(arm: Arm, path: Path, split: str = "test", rows: int = OVERLAY_ROWS) -> Path | None:
    """Test images with every model's attention map laid over them (from the attention-iou
    metric's ``attn_overlay`` lists)."""
    images = arm.final.get(f"{split}/attn_overlay_images")
    roles = [r for r in [arm.role, *arm.teacher_roles] if isinstance(arm.final.get(f"{split}/attn_overlay/{r}"), list)]
    if not isinstance(images, list) or not images or not roles:
        return None
    import numpy as np

    plt = _pyplot()
    count = min(rows, len(images))
    fig, axes = plt.subplots(count, len(roles) + 1, figsize=(1.8 * (len(roles) + 1), 1.8 * count), squeeze=False)
    for i in range(count):
        image = np.asarray(images[i], dtype=np.uint8).transpose(1, 2, 0)
        axes[i][0].imshow(image)
        for j, role in enumerate(roles, 1):
            attention = np.asarray(arm.final[f"{split}/attn_overlay/{role}"][i], dtype=float)
            axes[i][j].imshow(image)
            # extent pins the map onto the image's pixel grid whatever the map's resolution
            axes[i][j].imshow(attention, cmap="jet", alpha=0.5, extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5), vmin=0, vmax=1)
            if i == 0:
                axes[i][j].set_title(role, fontsize=9)
        if i == 0:
            axes[i][0].set_title("image", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"Attention ({split}): {arm.name}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def representative_arm(groups: list[Group], has: Callable[[Arm], bool]) -> Arm | None:
    """The first arm (groups in table order, lowest seed first) that has the data."""
    for group in groups:
        for arm in sorted(group.arms, key=lambda a: a.seed):
            if has(arm):
                return arm
    return None


def safe_file_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", label) or "run"


# ----------------------------------------------------------------------------- report
@dataclass
class Report:
    groups: list[Group]
    table: str
    teachers_table: str
    findings: list[Finding]
    files: list[Path]
    skipped_plots: list[str]


def build_report(
    run_dir: Path,
    out_dir: Path | None = None,
    strong: Iterable[str] = STRONG_POLICIES,
    weak: Iterable[str] = WEAK_POLICIES,
    log: Callable[[str], None] = print,
) -> Report:
    """Read the runs under ``run_dir`` and write study.csv, study.md and the plots to ``out_dir``."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    arms = load_arms(run_dir, log)
    teachers = TeacherIndex()
    groups = group_arms(arms, teachers.policy, fallback_label=run_dir.resolve().name)
    table = study_table(groups)
    teacher_headers, teacher_rows = teachers.table(arms)
    teachers_table = markdown_table(teacher_headers, teacher_rows) if teacher_rows else ""
    items = findings(groups, strong, weak)

    files: list[Path] = []
    skipped: list[str] = []

    def keep(name: str, written: Path | None) -> None:
        (files.append(written) if written is not None else skipped.append(name))

    keep("accuracy vs fidelity (no student~ensemble fidelity)", plot_accuracy_vs_fidelity(groups, out_dir / "accuracy_vs_fidelity.png"))
    keep("attention IoU vs gap (no teacher~teacher attention IoU)", plot_attention_vs_gap(groups, out_dir / "attention_iou_vs_gap.png"))
    reliability_arm = representative_arm(groups, lambda a: isinstance(a.final.get(f"test/reliability10/{a.role}"), list))
    keep("reliability diagrams (no calibration metric)", plot_reliability(reliability_arm, out_dir / "reliability.png") if reliability_arm else None)
    overlays = []
    for group in groups:
        arm = representative_arm([group], lambda a: isinstance(a.final.get("test/attn_overlay_images"), list))
        if arm is not None:
            (out_dir / "overlays").mkdir(exist_ok=True)
            written = plot_attention_overlays(arm, out_dir / "overlays" / f"{safe_file_name(group.label)}.png")
            if written is not None:
                overlays.append(written)
    files += overlays
    if not overlays:
        skipped.append("attention overlays (no attention-iou overlays in the summaries)")

    csv_path = out_dir / "study.csv"
    write_study_csv(groups, csv_path)
    md_path = out_dir / "study.md"
    md_path.write_text(study_markdown(run_dir, arms, groups, table, teachers_table, items, files, skipped, out_dir))
    return Report(groups, table, teachers_table, items, [csv_path, md_path, *files], skipped)


def study_markdown(
    run_dir: Path, arms: list[Arm], groups: list[Group], table: str, teachers_table: str,
    items: list[Finding], plots: list[Path], skipped: list[str], out_dir: Path,
) -> str:
    lines = [
        f"# Study report: {run_dir}",
        "",
        f"{len(arms)} runs in {len(groups)} arm groups (runs that differ only by seed are grouped). "
        "Cells are means over seeds on the clean test split unless the column names another split; "
        "test top-1 shows mean ± sample std; study.csv has the std of every column. "
        "s = student, T = teacher, ens = the teachers' mean-logit ensemble; gap = train top-1 minus test top-1.",
        "",
        "## Arm groups",
        "",
        table,
        "",
    ]
    if teachers_table:
        lines += ["## Teachers", "", teachers_table, ""]
    lines += ["## Findings (STUDY.md)", "", findings_markdown(items), ""]
    if plots or skipped:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in plots]
        lines += [f"- not drawn: {name}" for name in skipped]
        lines.append("")
    return "\n".join(lines)
