"""From a validated spec to finished runs: teachers first (cached by content), then the
student; a spec with ``matrix:`` runs every arm, skipping arms that already finished.

This module holds the orchestration the CLI only calls: which arms to run, where a run
goes, resuming, and whether a grid is a study (a grid over seeds).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from kdzoo import rundir
from kdzoo.api.keys import trained_role
from kdzoo.errors import KdzooError, TrainingError
from kdzoo.host import PluginHost
from kdzoo.run import distributed
from kdzoo.run.checkpoint import write_json, write_text
from kdzoo.run.launchers.running import running_marker
from kdzoo.spec import AnySpec, DistillSpec, validate_spec
from kdzoo.spec.describe import spec_differences

Log = Callable[[str], None]


def write_spec(run_dir: Path, spec: AnySpec) -> None:
    if distributed.is_main():  # several processes: rank 0 writes
        write_text(run_dir / rundir.SPEC_FILE, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))


def stored_spec(run_dir: Path) -> dict[str, Any] | None:
    """The resolved spec a run directory was started with (None if it has none readable)."""
    path = run_dir / rundir.SPEC_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class Member:
    """One run of a pass: its name (an arm's), spec and directory, and whether it resumes there."""

    name: str
    spec: AnySpec
    run_dir: Path
    resume: bool = False


OnFailure = Callable[[str, TrainingError], None]


def run_single(spec: AnySpec, host: PluginHost, run_dir: Path, resume: bool = False, log: Log = print,
               progress: bool | None = None, force: bool = False) -> dict[str, Any]:
    """Train or distil one run in ``run_dir`` (its inline teachers first) and return its summary."""
    member = Member(run_dir.name, spec, run_dir, resume)
    outcome = run_together([member], host, log, progress, force)[member.name]
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def run_together(members: list[Member], host: PluginHost, log: Log, progress: bool | None, force: bool = False,
                 on_failure: OnFailure | None = None) -> dict[str, dict[str, Any] | TrainingError]:
    """Train ``members`` (one run, or arms that fuse) in one pass, their shared inline teachers
    first: name -> summary, or the error that stopped it. Without ``on_failure`` an arm's
    failure before training is raised; with it, it is reported and the others go on."""
    from kdzoo.run.arm import Arm
    from kdzoo.run.data import load_data
    from kdzoo.run.teachers import prepare_teachers
    from kdzoo.run.trainer import TrainingPass, pass_inputs

    outcomes: dict[str, dict[str, Any] | TrainingError] = {}

    def failed(names: list[str], exc: TrainingError) -> None:
        if on_failure is None or (distributed.active() and not getattr(exc, "all_ranks", False)):
            raise exc
        for name in names:
            outcomes[name] = exc
            on_failure(name, exc)

    first = members[0].spec
    with ExitStack() as markers:
        for member in members:
            # The spec goes first: a run stopped while its teachers train can be resumed by its directory.
            if not (member.resume and rundir.has_state(member.run_dir)):
                write_spec(member.run_dir, member.spec)
            markers.enter_context(running_marker(member.run_dir))  # what `kdzoo status` reads as "running"
        try:
            data = load_data(first.data, host.registry)  # once: the teachers' checks and the pass share it
            teachers = prepare_teachers(first, host, teacher_trainer(host, log, progress), log, data) if isinstance(first, DistillSpec) else []
            inputs = pass_inputs(first, host, teachers, data)
        except TrainingError as exc:
            failed([m.name for m in members], exc)
            return outcomes
        arms = []
        for member in members:
            try:
                arms.append(Arm(member.spec, host, member.run_dir, inputs, log=log, name=member.name))
            except TrainingError as exc:
                failed([member.name], exc)
        if arms:
            training = TrainingPass(inputs, arms, log=log)
            resume = {m.name: m.resume for m in members}
            outcomes.update(training.fit(resume, progress, force, on_failure=lambda arm, exc: on_failure and on_failure(arm.name, exc)))
        for member in members:
            if not isinstance(outcomes.get(member.name), Exception):
                write_spec(member.run_dir, member.spec)  # unchanged unless --force resumed under a changed spec
    return outcomes


def teacher_trainer(host: PluginHost, log: Log, progress: bool | None) -> Callable[[Any, Path], None]:
    """How an inline teacher is trained into its cache folder: a run of its own (resumed
    there after a crash). Shared by runs and the launcher's teacher jobs."""

    def train_teacher(teacher_spec, path: Path) -> None:
        run_single(teacher_spec, host, path, resume=rundir.has_state(path), log=log, progress=progress)

    return train_teacher


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


def check_finished_matches(arm_dir: Path, spec: AnySpec, force: bool) -> bool:
    """True when ``arm_dir`` finished with exactly ``spec`` (skip it). A finished arm of a
    different spec is refused, naming the differences, unless ``force`` (then it reruns)."""
    if not rundir.is_finished(arm_dir):
        return False
    before = stored_spec(arm_dir)
    now = spec.model_dump(mode="json")
    if before == now:
        return True
    if not force:
        differences = "; ".join(spec_differences(before or {}, now))
        raise KdzooError(
            f"{arm_dir} finished with a different spec ({differences}); its results would be reported as this "
            "spec's. Use --force to rerun the arm, or another --out"
        )
    (arm_dir / rundir.SUMMARY_FILE).unlink()  # not finished any more while it reruns
    for stale in (rundir.state_file(arm_dir), arm_dir / rundir.FAILED_FILE):
        stale.unlink(missing_ok=True)
    return False


def check_all_finished(arms: list[tuple[str, AnySpec]], run_dir: Path, force: bool) -> None:
    """Refuse, before any work starts, a grid with an arm that finished under another spec."""
    if not force:
        for arm_name, spec in arms:
            check_finished_matches(rundir.arm_dir(run_dir, arm_name), spec, force=False)


def record_grid(run_dir: Path, arms: list[tuple[str, AnySpec]]) -> None:
    """Add these arms, and the teacher cache entries each needs, to the grid's
    ``grid.json`` (what ``kdzoo status`` lists, pending arms included).

    Merged, never replaced: a run of a few arms (``--arms``, a launched job) keeps the
    others listed, and a file that would not change is not rewritten."""
    from kdzoo.run.teachers import teacher_dir

    path = run_dir / rundir.GRID_FILE
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    entries = dict(known.get("arms") or {}) if isinstance(known, dict) else {}
    for arm_name, spec in arms:
        inline = spec.teachers if isinstance(spec, DistillSpec) else []
        entries[arm_name] = {"teachers": {t.name: str(teacher_dir(t.train).resolve()) for t in inline if t.train is not None}}
    if entries != (known.get("arms") if isinstance(known, dict) else None) and distributed.is_main():
        write_json(path, {"arms": entries})


def run_arms(arms: list[tuple[str, AnySpec]], host: PluginHost, run_dir: Path, log: Log, progress: bool | None,
             force: bool = False, fuse: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """Run a grid's arms (those that finished with this spec are skipped): arms that share
    their data, teachers and schedule length train fused, in one pass (unless ``fuse`` is
    off). A failing arm is reported, and the grid goes on. Summaries in grid order."""
    from kdzoo.run.fusion import fusion_groups

    check_all_finished(arms, run_dir, force)
    record_grid(run_dir, arms)
    position = {name: i for i, (name, _) in enumerate(arms, 1)}
    specs = dict(arms)
    total = len(arms)
    results: dict[str, dict[str, Any]] = {}
    pending = []
    for arm_name, spec in arms:
        arm_dir = rundir.arm_dir(run_dir, arm_name)
        if distributed.on_main(check_finished_matches, arm_dir, spec, force):  # rank 0 decides (and unlinks)
            log(f"[{position[arm_name]}/{total}] {arm_name}: already finished, skipped")
            results[arm_name] = json.loads((arm_dir / rundir.SUMMARY_FILE).read_text())
        else:
            (arm_dir / rundir.FAILED_FILE).unlink(missing_ok=True)
            pending.append(Member(arm_name, spec, arm_dir, resume=rundir.has_state(arm_dir)))

    def arm_failed(name: str, exc: TrainingError) -> None:  # a diverging or failing arm must not end a grid
        log(f"[{position[name]}/{total}] {name}: failed: {exc}")
        if distributed.is_main():
            write_json(rundir.arm_dir(run_dir, name) / rundir.FAILED_FILE, {"error": str(exc)})
        results[name] = failed_summary(specs[name], str(exc))

    for group in fusion_groups(pending, fuse):
        if len(group) == 1:
            log(f"[{position[group[0].name]}/{total}] {group[0].name}")
        else:
            log(f"[{len(group)} of {total} arms, fused in one pass] {', '.join(m.name for m in group)}")
        for name, outcome in run_together(group, host, log, progress, force, on_failure=arm_failed).items():
            if not isinstance(outcome, Exception):
                results[name] = outcome
    return [(name, results[name]) for name, _ in arms]


def resume_host_and_spec(run_dir: Path, plugins_dirs, load_host: Callable[[list[Path]], PluginHost]) -> tuple[PluginHost, AnySpec]:
    """The plugin host (with the run's own plugin files) and the resolved spec of ``run_dir``."""
    from kdzoo.spec.plugin_files import files_in_dirs

    path = run_dir / rundir.SPEC_FILE
    if not path.is_file():
        raise KdzooError(f"--resume: {run_dir} is not a kdzoo run directory (no {rundir.SPEC_FILE})")
    data = stored_spec(run_dir)
    if data is None:
        raise KdzooError(f"--resume: {path} is not a resolved kdzoo spec (unreadable YAML, or not a mapping of keys)")
    host = load_host([*map(Path, data.get("plugins") or []), *files_in_dirs(plugins_dirs)])
    return host, validate_spec(data, host.registry, str(path))


@dataclass
class Plan:
    """What ``kdzoo run SPEC`` will do: the arms, where they go, and whether it is a grid."""

    runs: list[tuple[str, AnySpec]]
    run_dir: Path
    grid: bool
    study: bool  # a whole grid over seeds: the study report is built at its end


def plan_runs(spec_data: dict[str, Any], runs: list[tuple[str, AnySpec]], out_dir: Path | None, arm_patterns: str | None) -> Plan:
    grid = spec_data.get("matrix") is not None
    if arm_patterns:
        if not grid:
            raise KdzooError("--arms selects arms of a spec with a matrix; this spec has none")
        runs = select_arms(runs, arm_patterns)
    run_dir = distributed.broadcast_object(out_dir or default_run_dir(runs[0][1], spec_data.get("name"), grid=grid))  # one timestamp
    if not grid and rundir.is_finished(run_dir):
        raise KdzooError(f"{run_dir} already holds a finished run; choose another --out")
    if not grid and rundir.has_state(run_dir):
        raise KdzooError(f"{run_dir} holds an unfinished run: continue it with --resume {run_dir}, or choose another --out")
    distributed.on_main(ensure_writable_dir, run_dir)
    # A part of a grid (--arms: a launched job, or a grid split by hand) leaves the study
    # report to the whole grid's process, or to `kdzoo report` once every part is done.
    return Plan(runs, run_dir, grid, grid and is_study(spec_data) and not arm_patterns)


def ensure_writable_dir(path: Path) -> None:
    """Create ``path`` now, so a run directory that cannot exist fails before any work."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".kdzoo-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise KdzooError(f"--out {path}: cannot create or write the run directory ({exc.strerror or exc})") from None


@dataclass
class Outcome:
    """What running a plan gave: each arm's summary in plan order (one entry, the run's
    name, for a run without a matrix), the arms that failed, and the study report (a grid
    over seeds) or None."""

    run_dir: Path
    grid: bool
    results: list[tuple[str, dict[str, Any]]]
    failed: list[str]
    report: Any = None  # kdzoo.study.report.Report


def run_plan(plan: Plan, host: PluginHost, label: str, log: Log, progress: bool | None, force: bool = False,
             fuse: bool = True, run_grid: Callable[[Plan], list[tuple[str, dict[str, Any]]]] | None = None,
             report_log: Log | None = None) -> Outcome:
    """What ``kdzoo run SPEC`` does once planned (shared by the CLI and the Python API): one
    run, or a grid's arms (fused unless ``fuse`` is off; through ``run_grid`` when a
    launcher runs them), its results table and, for a grid over seeds, the study report.
    A grid's failed arms are returned, not raised; a single run's failure is raised."""
    from kdzoo.run.tables import grid_table, run_table

    if not plan.grid:
        name, spec = plan.runs[0]
        log(f"{label}: {spec.kind} run -> {plan.run_dir}")
        summary = run_single(spec, host, plan.run_dir, log=log, progress=progress)
        log(run_table(summary))
        return Outcome(plan.run_dir, False, [(name, summary)], [])
    log(f"{label}: {len(plan.runs)} runs -> {plan.run_dir}")
    if run_grid is None:
        results = run_arms(plan.runs, host, plan.run_dir, log=log, progress=progress, force=force, fuse=fuse)
    else:  # the same arms, specs and skip rules, each run in a process (or SLURM task) of its own
        results = run_grid(plan)
    log(grid_table(results))
    outcome = Outcome(plan.run_dir, True, results, [name for name, summary in results if "failed" in summary])
    if plan.study and distributed.is_main():  # several processes: rank 0 writes the report
        from kdzoo.study.report import build_report, findings_markdown

        outcome.report = build_report(plan.run_dir, None, log=report_log or log)
        log(f"\n{outcome.report.table}\n\n{findings_markdown(outcome.report.findings)}")
        log(f"study report: {outcome.report.files[0].parent}")
    return outcome


def grid_failure(outcome: Outcome) -> TrainingError | None:
    """The error a grid with failed arms ends with (scripts and CI must notice), or None."""
    if not outcome.failed:
        return None
    return TrainingError(f"{len(outcome.failed)} of {len(outcome.results)} arms failed: {', '.join(outcome.failed)} "
                         "(see failed.json in each)")


def resume_run(run_dir: Path, plugins_dirs, load_host: Callable[[list[Path]], PluginHost], log: Log,
               progress: bool | None, force: bool = False) -> Outcome:
    """Continue the interrupted run in ``run_dir`` from its last finished epoch (``kdzoo run
    --resume``), with the spec and plugin files it started with, and log its table."""
    from kdzoo.run.tables import run_table

    host, spec = resume_host_and_spec(run_dir, plugins_dirs, load_host)
    summary = run_single(spec, host, run_dir, resume=True, log=log, progress=progress, force=force)
    log(run_table(summary))
    return Outcome(run_dir, False, [(spec.name or run_dir.name, summary)], [])
