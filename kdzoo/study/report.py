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
from kdzoo.study.arms import Arm, Group, TeacherIndex, group_arms, load_arms
from kdzoo.study.findings import STRONG_POLICIES, WEAK_POLICIES, Finding, findings, findings_markdown
from kdzoo.study.plots import (
    OVERLAY_IMAGES,
    plot_accuracy_vs_fidelity,
    plot_attention_overlays,
    plot_attention_vs_gap,
    plot_reliability,
    representative_arm,
    safe_file_name,
)
from kdzoo.study.quantities import study_table, write_study_csv
from kdzoo.tables import markdown_table

# What callers (the CLI, the tests) import from here; the rest lives in arms, quantities,
# findings and plots.
__all__ = [
    "Arm", "Group", "Finding", "Report", "STRONG_POLICIES", "WEAK_POLICIES",
    "build_report", "findings", "findings_markdown", "load_arms", "study_markdown",
]


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
    write_text(md_path, study_markdown(run_dir, arms, groups, table, teachers_table, items, files, skipped, out_dir))
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
