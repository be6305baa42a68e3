"""The tables `kdzoo run` prints: one run's models, and a grid's arms."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdzoo import rundir
from kdzoo.api.keys import ENSEMBLE, metric_key, pair_metric_key
from kdzoo.tables import markdown_table

# Same-area baselines of the attention-on-object IoU: (quantity, column header).
OBJECT_BASELINES = (
    ("attn_object_iou_random", "object IoU: random mask, same area"),
    ("attn_object_iou_disc", "object IoU: centred disc, same area"),
)


def run_table(summary: dict[str, Any]) -> str:
    """Per-model table of one run: test top-1, fidelity to the teacher ensemble, time; and
    attention-on-object IoU (and its same-area random and centred-disc baselines) when the
    dataset has object masks and the metric ran."""
    final = summary["final"]
    role = summary["role"]
    models = [(t, "teacher", info) for t, info in summary.get("teachers", {}).items()]
    models.append((role, "student" if role == "student" else "model", None))
    with_object = any(metric_key("test", "attn_object_iou", name) in final for name, _, _ in models)
    # The chance levels to read it against (same area as the model's mask), when recorded.
    baselines = [
        (quantity, header)
        for quantity, header in OBJECT_BASELINES
        if any(metric_key("test", quantity, name) in final for name, _, _ in models)
    ]
    rows = []
    for name, kind, info in models:
        if info is None:
            seconds = summary["wall_time_s"]
        else:  # the teacher's own training time, when it was trained as part of this run
            teacher_summary = Path(info["checkpoint"]) / rundir.SUMMARY_FILE
            seconds = json.loads(teacher_summary.read_text())["wall_time_s"] if teacher_summary.is_file() else None
        row = [name, kind, final.get(metric_key("test", "top1", name)), final.get(pair_metric_key("test", "fidelity", name, ENSEMBLE))]
        if with_object:
            row.append(final.get(metric_key("test", "attn_object_iou", name)))
        row += [final.get(metric_key("test", quantity, name)) for quantity, _ in baselines]
        rows.append([*row, seconds])
    headers = ["model", "role", "test top-1", "fidelity to ensemble"]
    headers += ["attention on object (IoU)"] if with_object else []
    headers += [header for _, header in baselines]
    return markdown_table([*headers, "time (s)"], rows)


def grid_table(results: list[tuple[str, dict[str, Any]]]) -> str:
    rows = []
    for arm, summary in results:
        final, role = summary["final"], summary["role"]
        rows.append([
            arm + (" (failed)" if "failed" in summary else ""),
            final.get(metric_key("test", "top1", role)),
            final.get(pair_metric_key("test", "fidelity", role, ENSEMBLE)),
            summary.get("gap_at_best"),
            summary.get("train_time_s", 0) / max(1, summary.get("epochs", 1)) if "failed" not in summary else None,
            summary.get("connector_parameters"),
            f"{len(summary['fused_with']) + 1} arms" if summary.get("fused_with") else "",
        ])
    headers = ["arm", "test top-1", "fidelity to ensemble", "gap at best", "s / epoch", "connector params", "fused (pass of)"]
    return markdown_table(headers, rows)
