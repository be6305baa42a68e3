"""``kdzoo report``: the study's tables, findings and plots from finished runs.

Reads a grid directory (``RUN_DIR/arms/<arm>/``) or a single run directory: each
run's ``spec.yaml`` (resolved spec), ``summary.json`` and ``metrics.jsonl``. Arms that
differ only by seed form one *arm group*; every figure of a group is the mean over its
seeds, with the sample standard deviation beside it.

Writes ``study.csv`` (every mean and std), ``study.md`` (arms table, teachers table,
findings, plots) and PNG plots. The findings test the four directions of
``shared/STUDY.md`` from the numbers, comparing arms whose teachers were all trained
with strong augmentation against arms whose teachers were all trained with weak.

This module only assembles the report (:func:`build_report`, ``study.md``); the arms are
:mod:`kdzoo.study.arms`', the figures :mod:`kdzoo.study.quantities`', the findings
:mod:`kdzoo.study.findings`' and the plots :mod:`kdzoo.study.plots`'.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from kdzoo.api.keys import metric_key, split_key
from kdzoo.run.checkpoint import write_text
from kdzoo.study.arms import TEACHER_HEADERS, Arm, Group, TeacherIndex, group_arms, load_arms
from kdzoo.study.findings import RULE, Finding, findings, findings_markdown, group_level
from kdzoo.study.regime import Check, regime_checks, regime_markdown
from kdzoo.study.strength import STRONG_POLICIES, WEAK_POLICIES, StrengthScale, affinity_scale, class_scale, policy_labels, read_affinity
from kdzoo.study.plots import (
    OVERLAY_IMAGES,
    plot_accuracy_vs_fidelity,
    plot_attention_overlays,
    plot_attention_vs_gap,
    plot_reliability,
    plot_strength_axis,
    representative_arm,
    safe_file_name,
)
from kdzoo.study.quantities import group_spread, study_table, write_study_csv
from kdzoo.tables import markdown_table

# What callers (the CLI, the tests) import from here; the rest lives in arms, quantities,
# findings and plots.
__all__ = [
    "Arm", "Group", "Finding", "Report", "STRONG_POLICIES", "WEAK_POLICIES",
    "build_report", "findings", "findings_markdown", "load_arms", "study_markdown", "strength_table",
]


@dataclass
class Report:
    groups: list[Group]
    table: str
    teachers_table: str
    findings: list[Finding]
    files: list[Path]
    skipped_plots: list[str]
    scale: StrengthScale
    checks: list[Check]
    strength_table: str


def build_report(
    run_dir: Path,
    out_dir: Path | None = None,
    strong: Iterable[str] = STRONG_POLICIES,
    weak: Iterable[str] = WEAK_POLICIES,
    log: Callable[[str], None] = print,
    affinity: Path | None = None,
    baseline: Path | None = None,
) -> Report:
    """Read the runs under ``run_dir`` and write study.csv, study.md and the plots to ``out_dir``.

    ``affinity``: an ``affinity.csv`` of ``kdzoo affinity`` that orders the teacher
    policies by strength (else the two classes ``strong`` / ``weak``); ``baseline``: the
    CE-only student runs, for the regime checks.
    """
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    arms = load_arms(run_dir, log)
    baseline_arms = load_arms(Path(baseline), log) if baseline is not None else []
    affinity_rows = read_affinity(Path(affinity)) if affinity is not None else None  # refuse a bad file before writing
    out_dir.mkdir(parents=True, exist_ok=True)
    teachers = TeacherIndex()
    labels = policy_labels(teachers.policy(arm, role) for arm in arms for role in arm.teacher_roles)
    groups = group_arms(arms, lambda arm, role: labels[teachers.policy(arm, role)], fallback_label=run_dir.resolve().name)
    scale = affinity_scale(labels, affinity_rows, str(affinity)) if affinity_rows is not None else class_scale(labels, strong, weak)
    table = study_table(groups)
    teacher_rows = teachers.table(arms, labels)
    teachers_table = markdown_table(TEACHER_HEADERS, teacher_rows) if teacher_rows else ""
    items = findings(groups, scale, teachers.seed)
    checks = regime_checks(baseline_arms, teacher_rows, scale)
    strength = strength_table(groups, scale)

    files: list[Path] = []
    skipped: list[str] = []

    def keep(name: str, written: Path | None) -> None:
        (files.append(written) if written is not None else skipped.append(name))

    keep("accuracy vs fidelity (no student~ensemble fidelity)", plot_accuracy_vs_fidelity(groups, out_dir / "accuracy_vs_fidelity.png"))
    keep("attention IoU vs gap (no teacher~teacher attention IoU)", plot_attention_vs_gap(groups, out_dir / "attention_iou_vs_gap.png"))
    keep("strength axis (teachers at fewer than two strengths)",
         plot_strength_axis(groups, lambda g: group_level(g, scale), scale.levels, scale.affinity, out_dir / "strength_axis.png"))
    reliability_arm = representative_arm(groups, lambda a: isinstance(a.final.get(metric_key("test", "reliability10", a.role)), list))
    keep("reliability diagrams (no calibration metric)", plot_reliability(reliability_arm, out_dir / "reliability.png") if reliability_arm else None)
    overlays = []
    for group in groups:
        arm = representative_arm([group], lambda a: isinstance(a.final.get(split_key("test", OVERLAY_IMAGES)), list))
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
    write_text(md_path, study_markdown(run_dir, arms, groups, table, teachers_table, items, files, skipped, out_dir,
                                       regime_markdown(checks), strength, scale))
    return Report(groups, table, teachers_table, items, [csv_path, md_path, *files], skipped, scale, checks, strength)


STRENGTH_COLUMNS = ("attn_iou_teacher_teacher", "fidelity_student_ensemble", "mi_student_ensemble", "gap_at_best", "test_top1")


def strength_table(groups: list[Group], scale: StrengthScale) -> str:
    """The dose-response: one row per strength level and teacher count, mean ± std over seeds."""
    rows = []
    for rank, level in enumerate(scale.levels):
        for group in sorted((g for g in groups if group_level(g, scale) == level), key=lambda g: (g.n_teachers, g.student_policy)):
            cells = [group_spread(group, key).text() for key in STRENGTH_COLUMNS]
            rows.append([level, scale.affinity.get(level), group.n_teachers, group.student_policy, *cells, len(group.seeds)])
    headers = ["teacher policy", "affinity", "teachers", "student policy", "attn IoU T~T", "fid s~ens", "MI s~ens", "gap @best", "test top-1", "seeds"]
    return markdown_table(headers, rows) if rows else ""


def study_markdown(
    run_dir: Path, arms: list[Arm], groups: list[Group], table: str, teachers_table: str,
    items: list[Finding], plots: list[Path], skipped: list[str], out_dir: Path,
    regime: str = "", strength: str = "", scale: StrengthScale | None = None,
) -> str:
    lines = [
        f"# Study report: {run_dir}",
        "",
        f"{len(arms)} runs in {len(groups)} arm groups (runs that differ only by seed are grouped). "
        "Cells are means over seeds on the clean test split unless the column names another split; "
        "test top-1 shows mean ± sample std; study.csv has the std of every column. "
        "s = student, T = teacher, ens = the teachers' mean-logit ensemble; gap = train top-1 minus test top-1.",
        "",
    ]
    if regime:
        lines += ["## Regime checks", "", regime, ""]
    if strength:
        lines += ["## Strength axis", "", f"Teacher policies ordered by {scale.source}, weakest first; mean ± std over seeds.", "", strength, ""]
    lines += ["## Arm groups", "", table, ""]
    if teachers_table:
        lines += ["## Teachers", "", teachers_table, ""]
    lines += ["## Findings (STUDY.md)", "", RULE, "", findings_markdown(items), ""]
    if plots or skipped:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in plots]
        lines += [f"- not drawn: {name}" for name in skipped]
        lines.append("")
    return "\n".join(lines)
