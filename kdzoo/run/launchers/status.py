"""What ``kdzoo status`` reports: each arm of a grid (done, running, stopped, failed,
pending) and each teacher cache entry the arms need (done, training, partial, pending).
Read from the run directories alone — ``grid.json``, the arms' files, ``running.json``
markers — so it answers in a second, without torch, for any launcher.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from kdzoo import rundir
from kdzoo.api.keys import metric_key
from kdzoo.run.launchers.running import marker_alive, read_marker
from kdzoo.tables import markdown_table

ARM_STATES = ("done", "running", "stopped", "failed", "pending")

Planned = dict[str, dict[str, str]]  # arm -> {teacher name: cache entry}


def planned_arms(grid_dir: Path) -> Planned:
    """The arms (and their teachers' cache entries) that ``grid.json`` lists."""
    try:
        data = json.loads((grid_dir / rundir.GRID_FILE).read_text())
    except (OSError, ValueError):
        return {}
    arms = data.get("arms") if isinstance(data, dict) else None
    return {name: dict((entry or {}).get("teachers") or {}) for name, entry in (arms or {}).items()}


def grid_status(grid_dir: Path, planned: Planned | None = None) -> dict[str, Any]:
    """The status of a grid (or of one run directory), as JSON-ready data: the arms of
    ``planned`` (a spec's), else those of ``grid.json`` and any other arm directory."""
    grid_dir = Path(grid_dir)
    on_disk = [] if planned is not None else [p.name for p in rundir.arm_dirs(grid_dir) or []]
    planned = planned_arms(grid_dir) if planned is None else planned
    single = not planned and not on_disk and (grid_dir / rundir.SPEC_FILE).is_file()
    if single:  # a plain run directory: one row, itself
        arms = [{"arm": grid_dir.name, **run_state(grid_dir)}]
        teachers_of: Planned = {grid_dir.name: _teachers_from_summary(grid_dir)}
    else:
        names = [*planned, *(n for n in on_disk if n not in planned)]
        arms = [{"arm": name, **run_state(rundir.arm_dir(grid_dir, name))} for name in names]
        teachers_of = {name: planned.get(name) or _teachers_from_summary(rundir.arm_dir(grid_dir, name)) for name in names}
    entries: dict[str, str] = {}
    for teachers in teachers_of.values():
        for teacher, path in teachers.items():
            entries.setdefault(str(Path(path).resolve()), teacher)
    teachers = [{"teacher": name, "entry": path, **teacher_state(Path(path))} for path, name in entries.items()]
    counts = {state: sum(a["state"] == state for a in arms) for state in ARM_STATES}
    return {"run_dir": str(grid_dir), "grid": not single, "arms": arms, "teachers": teachers, "counts": counts}


def _teachers_from_summary(run_dir: Path) -> dict[str, str]:
    """A finished run's teachers (paths as the run saw them: relative to where it ran)."""
    summary = rundir.read_json(run_dir / rundir.SUMMARY_FILE) or {}
    return {name: str(info.get("checkpoint")) for name, info in (summary.get("teachers") or {}).items() if info.get("checkpoint")}


def _progress(run_dir: Path) -> tuple[int, int | None, float | None]:
    """Epochs finished, epochs planned, seconds since the run last wrote its metrics."""
    metrics = run_dir / rundir.METRICS_FILE
    try:
        done = sum(1 for line in metrics.read_text().splitlines() if line.strip())
        quiet_s = time.time() - metrics.stat().st_mtime
    except OSError:
        done, quiet_s = 0, None
    try:
        epochs = (yaml.safe_load((run_dir / rundir.SPEC_FILE).read_text()) or {}).get("epochs")
    except (OSError, yaml.YAMLError, AttributeError):
        epochs = None
    return done, epochs if isinstance(epochs, int) else None, quiet_s


def run_state(run_dir: Path) -> dict[str, Any]:
    """One run directory's state, with its test top-1 when done and why when failed."""
    if rundir.is_finished(run_dir):
        summary = rundir.read_json(run_dir / rundir.SUMMARY_FILE) or {}
        top1 = (summary.get("final") or {}).get(metric_key("test", "top1", summary.get("role", "student")))
        seconds = summary.get("wall_time_s")
        return {"state": "done", "top1": top1, "detail": f"{seconds:.1f} s" if isinstance(seconds, (int, float)) else ""}
    done, epochs, quiet_s = _progress(run_dir)
    of = f"{done}/{epochs} epochs" if epochs else f"{done} epochs"
    marker = read_marker(run_dir)
    if marker is not None and marker_alive(marker):
        where = f"pid {marker.get('pid')} on {marker.get('host')}"
        since = f", last epoch {quiet_s:.0f} s ago" if quiet_s is not None and done else ""
        return {"state": "running", "top1": None, "detail": f"{of}; {where}{since}", "pid": marker.get("pid"), "host": marker.get("host")}
    failed = rundir.read_json(run_dir / rundir.FAILED_FILE)
    if failed is not None:
        return {"state": "failed", "top1": None, "detail": str(failed.get("error", "")), "reason": failed.get("error")}
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return {"state": "pending", "top1": None, "detail": ""}
    gone = f"; its process ({marker.get('pid')} on {marker.get('host')}) is gone" if marker else ""
    return {"state": "stopped", "top1": None, "detail": f"{of}{gone}; rerun the grid to resume it"}


def teacher_state(entry: Path) -> dict[str, Any]:
    """A teacher cache entry: done, training (a live run in its .partial folder), partial
    (a run stopped there: the next run that needs it resumes it) or pending."""
    state = run_state(entry)
    if state["state"] == "done":
        return state
    partial = run_state(rundir.teacher_partial_dir(entry))
    # "done" in .partial: finished, killed before its publishing rename (the next run publishes it)
    names = {"running": "training", "stopped": "partial", "failed": "partial", "pending": "pending", "done": "partial"}
    return {**partial, "state": names[partial["state"]]}


def format_status(status: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in status["counts"].items() if n)
    arms = status["arms"]
    lines = [f"{status['run_dir']}: {len(arms)} arm{'s' if len(arms) != 1 else ''}" + (f": {counts}" if counts else "")]
    rows = [[a["arm"], a["state"], a.get("top1"), a.get("detail", "")] for a in arms]
    lines.append(markdown_table(["arm" if status["grid"] else "run", "state", "test top-1", "detail"], rows))
    if status["teachers"]:
        rows = [[t["teacher"], t["state"], t.get("top1"), t["entry"]] for t in status["teachers"]]
        lines += ["", "teachers (cache entries):", markdown_table(["teacher", "state", "test top-1", "entry"], rows)]
    return "\n".join(lines)
