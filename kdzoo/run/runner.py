"""From a validated spec to finished runs: teachers first (cached by content), then the
student; a spec with ``matrix:`` runs every arm, skipping arms that already finished.

This module holds the orchestration the CLI only calls: which arms to run, where a run
goes, resuming, and whether a grid is a study (a grid over seeds).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from kdzoo import rundir
from kdzoo.api.keys import trained_role
from kdzoo.errors import KdzooError, TrainingError
from kdzoo.host import PluginHost
from kdzoo.run.checkpoint import write_json, write_text
from kdzoo.spec import AnySpec, DistillSpec, validate_spec

Log = Callable[[str], None]


def write_spec(run_dir: Path, spec: AnySpec) -> None:
    write_text(run_dir / rundir.SPEC_FILE, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))


def run_single(spec: AnySpec, host: PluginHost, run_dir: Path, resume: bool = False, log: Log = print, progress: bool | None = None) -> dict[str, Any]:
    """Train or distil one run in ``run_dir`` (its inline teachers first) and return its summary."""
    from kdzoo.run.teachers import prepare_teachers
    from kdzoo.run.trainer import Trainer

    def train_teacher(teacher_spec, path: Path) -> None:
        run_single(teacher_spec, host, path, resume=rundir.has_state(path), log=log, progress=progress)

    teachers = prepare_teachers(spec, host, train_teacher, log) if isinstance(spec, DistillSpec) else []
    write_spec(run_dir, spec)
    trainer = Trainer(spec, host, run_dir, teachers, log=log)
    return trainer.fit(resume=resume, progress_disabled=progress)


def default_run_dir(spec: AnySpec, name: str | None, grid: bool) -> Path:
    base = Path(spec.output_dir) / (name or spec.name or "run")
    # A grid lives at a stable path so that a rerun skips the arms that finished.
    return base if grid else base.parent / f"{base.name}-{datetime.now():%Y%m%d-%H%M%S}"


def select_arms(runs: list[tuple[str, AnySpec]], patterns: str) -> list[tuple[str, AnySpec]]:
    """The arms whose names match one of the comma-separated globs."""
    globs = [p.strip() for p in patterns.split(",") if p.strip()]
    chosen = [(name, spec) for name, spec in runs if any(fnmatch.fnmatchcase(name, g) for g in globs)]
    if not chosen:
        raise KdzooError(f"--arms {patterns}: no arm matches")
    return chosen


def is_study(spec_data: dict[str, Any]) -> bool:
    """A grid over seeds is a study: its arms are grouped over seeds with findings and plots."""
    return "seed" in (spec_data.get("matrix") or {})


def failed_summary(spec: AnySpec, error: str) -> dict[str, Any]:
    return {"failed": error, "role": trained_role(spec.kind), "final": {}, "wall_time_s": None}


def run_arms(arms: list[tuple[str, AnySpec]], host: PluginHost, run_dir: Path, log: Log, progress: bool | None) -> list[tuple[str, dict[str, Any]]]:
    results = []
    for i, (arm_name, spec) in enumerate(arms, 1):
        arm_dir = rundir.arm_dir(run_dir, arm_name)
        if rundir.is_finished(arm_dir):
            log(f"[{i}/{len(arms)}] {arm_name}: already finished, skipped")
            summary = json.loads((arm_dir / rundir.SUMMARY_FILE).read_text())
        else:
            log(f"[{i}/{len(arms)}] {arm_name}")
            try:
                summary = run_single(spec, host, arm_dir, resume=rundir.has_state(arm_dir), log=log, progress=progress)
            except TrainingError as exc:  # a diverging or failing arm must not end a grid
                log(f"[{i}/{len(arms)}] {arm_name}: failed: {exc}")
                write_json(arm_dir / rundir.FAILED_FILE, {"error": str(exc)})
                summary = failed_summary(spec, str(exc))
        results.append((arm_name, summary))
    return results


def resume_host_and_spec(run_dir: Path, plugins_dirs, load_host: Callable[[list[Path]], PluginHost]) -> tuple[PluginHost, AnySpec]:
    """The plugin host (with the run's own plugin files) and the resolved spec of ``run_dir``."""
    from kdzoo.spec.plugin_files import files_in_dirs

    path = run_dir / rundir.SPEC_FILE
    if not path.is_file():
        raise KdzooError(f"--resume: {run_dir} is not a kdzoo run directory (no {rundir.SPEC_FILE})")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise KdzooError(f"--resume: {path} is not a resolved kdzoo spec (a mapping of keys)")
    host = load_host([*map(Path, data.get("plugins") or []), *files_in_dirs(plugins_dirs)])
    return host, validate_spec(data, host.registry, str(path))


@dataclass
class Plan:
    """What ``kdzoo run SPEC`` will do: the arms, where they go, and whether it is a grid."""

    runs: list[tuple[str, AnySpec]]
    run_dir: Path
    grid: bool
    study: bool


def plan_runs(spec_data: dict[str, Any], runs: list[tuple[str, AnySpec]], out_dir: Path | None, arm_patterns: str | None) -> Plan:
    grid = spec_data.get("matrix") is not None
    if arm_patterns:
        if not grid:
            raise KdzooError("--arms selects arms of a spec with a matrix; this spec has none")
        runs = select_arms(runs, arm_patterns)
    run_dir = out_dir or default_run_dir(runs[0][1], spec_data.get("name"), grid=grid)
    if not grid and rundir.is_finished(run_dir):
        raise KdzooError(f"{run_dir} already holds a finished run; choose another --out")
    return Plan(runs, run_dir, grid, grid and is_study(spec_data))
