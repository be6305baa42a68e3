"""A grid run as jobs: every inline teacher the unfinished arms need, once each, then
the arms; finished arms skipped, a failed arm recorded while the others go on — the
rules of :func:`kdzoo.run.runner.run_arms`, with each run in a process of its own."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdzoo import rundir
from kdzoo.api.keys import metric_key
from kdzoo.run import runner
from kdzoo.run.checkpoint import write_json
from kdzoo.run.launchers import LaunchOptions
from kdzoo.run.launchers.jobs import Job, arm_argv, last_error, shared_args, teacher_argv, thread_env, usable_cores
from kdzoo.run.launchers.running import marker_alive, read_marker
from kdzoo.spec import AnySpec, DistillSpec

Log = Callable[[str], None]
# Executes one wave of jobs: (jobs, wave name, started(job, where), finished(job, exit code, error)).
Execute = Callable[[list[Job], str, Callable, Callable], None]


def launch_grid(plan: runner.Plan, options: LaunchOptions, spec_path: Path, overrides: tuple[str, ...],
                plugins_dirs: tuple[Path, ...], force: bool, log: Log, fuse: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """Run the grid's unfinished arms as jobs and return (arm, summary) for every arm,
    in the grid's order, as ``run_arms`` does. ``fuse``: one job per group of arms that
    train fused (one pass, one GPU for many students), else one job per arm."""
    grid_dir, arms = plan.run_dir, plan.runs
    runner.check_all_finished(arms, grid_dir, force)  # a refusal comes before any work
    runner.record_grid(grid_dir, arms)
    position = {name: f"[{i}/{len(arms)}] {name}" for i, (name, _) in enumerate(arms, 1)}
    todo, elsewhere = [], {}
    for name, spec in arms:
        marker = read_marker(rundir.arm_dir(grid_dir, name))
        if runner.check_finished_matches(rundir.arm_dir(grid_dir, name), spec, force):
            log(f"{position[name]}: already finished, skipped")
        elif marker is not None and marker_alive(marker):
            # Two processes writing one run directory would corrupt it: leave it to its owner.
            elsewhere[name] = f"still running (pid {marker.get('pid')} on {marker.get('host')}); not started again"
            log(f"{position[name]}: {elsewhere[name]} (a stale marker of a lost node: delete {rundir.RUNNING_FILE})")
        else:
            todo.append((name, spec))
    execute, parallel, threads_for, processes = _executor(options, arms[0][1], grid_dir)
    shared = shared_args(overrides, plugins_dirs)
    blocked = _train_teachers(todo, spec_path, grid_dir, shared, execute, parallel, threads_for, log)
    for arm, reason in blocked.items():
        log(f"{position[arm]}: failed: {reason}")
        write_json(rundir.arm_dir(grid_dir, arm) / rundir.FAILED_FILE, {"error": reason})
    arm_jobs = _arm_jobs([(name, spec) for name, spec in todo if name not in blocked], spec_path, grid_dir, shared, force, fuse,
                         processes)
    _with_threads(arm_jobs, threads_for)

    def arm_started(job: Job, where: str) -> None:
        for name, arm_dir in job.arms:
            (arm_dir / rundir.FAILED_FILE).unlink(missing_ok=True)  # a reason left now is this attempt's
            log(f"{position[name]}: started ({where}{', fused with ' + str(len(job.arms) - 1) + ' more' if job.members else ''}); log: {job.log}")

    def arm_done(job: Job, code: int | None, error: str | None) -> None:
        for name, arm_dir in job.arms:
            log(f"{position[name]}: {_arm_outcome(arm_dir, job, code, error)}")

    if arm_jobs:
        execute(arm_jobs, "arms", arm_started, arm_done)
    return [(name, arm_result(grid_dir, name, spec, elsewhere.get(name))) for name, spec in arms]


def _train_teachers(todo: list[tuple[str, AnySpec]], spec_path: Path, grid_dir: Path, shared: list[str], execute: Execute,
                    parallel: int | None, threads_for: Callable[[int], int | None], log: Log) -> dict[str, str]:
    """Train every unfinished teacher the arms need, one job each; the arms that cannot
    run, each with why (a teacher it needs failed)."""
    teacher_jobs, needed_by = _teacher_jobs(todo, spec_path, grid_dir, shared)
    blocked: dict[str, str] = {}
    if not teacher_jobs:
        return blocked
    at_once = f", up to {parallel} at once" if parallel and len(teacher_jobs) > 1 else ""
    log(f"{len(teacher_jobs)} teacher{'s' if len(teacher_jobs) > 1 else ''} first{at_once}")
    _with_threads(teacher_jobs, threads_for)

    def started(job: Job, where: str) -> None:
        log(f"teacher {job.name}: started ({where}); log: {job.log}")

    def finished(job: Job, code: int | None, error: str | None) -> None:
        if code == 0 and rundir.is_finished(job.run_dir):
            log(f"teacher {job.name}: ready in {job.run_dir}")
            return
        reason = error or f"exit code {code}: {last_error(job.log)}"
        log(f"teacher {job.name}: failed: {reason} (log: {job.log})")
        for arm in needed_by[job.label]:
            blocked[arm] = f"teacher {job.name} could not be trained: {reason}"

    execute(teacher_jobs, "teachers", started, finished)
    return blocked


def _executor(options: LaunchOptions, first: AnySpec,
              grid_dir: Path) -> tuple[Execute, int | None, Callable[[int], int | None], int | None]:
    """How waves run, how many jobs at most at once, the threads of each job of a wave of N,
    and the processes of each arm's job (slurm with several GPUs per arm: one per GPU)."""
    if options.launcher == "local":
        from kdzoo.run.launchers.local import run_local

        parallel = options.jobs or 1

        def execute(jobs: list[Job], wave: str, started, finished) -> None:
            run_local(jobs, parallel, started, finished)

        # Two one-thread runs beat one two-thread run on two cores (torch's threads wait
        # on each other); a wave smaller than --jobs shares the cores among fewer jobs.
        return execute, parallel, (lambda n: max(1, usable_cores() // min(parallel, n)) if parallel > 1 else None), None
    from kdzoo.run.launchers import slurm  # imports submitit: only here

    settings = slurm.settings_with_flags(first.launcher, options)

    def execute(jobs: list[Job], wave: str, started, finished) -> None:
        slurm.run_submitit(jobs, settings, rundir.submitit_dir(grid_dir), f"kdzoo-{grid_dir.name}-{wave}", started, finished)

    gpus = settings.gpus_per_arm or 0
    return execute, settings.max_parallel, lambda n: settings.cpus_per_arm, gpus if gpus > 1 else None


def _teacher_jobs(todo: list[tuple[str, AnySpec]], spec_path: Path, grid_dir: Path,
                  shared: list[str]) -> tuple[list[Job], dict[str, list[str]]]:
    """One job per distinct unfinished cache entry (the content key), and the arms needing each."""
    from kdzoo.run.teachers import teacher_dir

    jobs: dict[str, Job] = {}
    needed_by: dict[str, list[str]] = {}
    for arm, spec in todo:
        for teacher in spec.teachers if isinstance(spec, DistillSpec) else []:
            if teacher.train is None:
                continue
            path = teacher_dir(teacher.train)
            label = f"teacher-{path.name}"
            if label not in jobs and not rundir.is_finished(path):
                jobs[label] = Job("teacher", teacher.name, label, teacher_argv(spec_path, arm, teacher.name, shared),
                                  rundir.launch_log(grid_dir, label), path, spec_threads=teacher.train.threads)
            if label in jobs:
                needed_by.setdefault(label, []).append(arm)
    return list(jobs.values()), needed_by


def _arm_jobs(arms: list[tuple[str, AnySpec]], spec_path: Path, grid_dir: Path, shared: list[str], force: bool,
              fuse: bool, processes: int | None = None) -> list[Job]:
    """One job per arm, or with ``fuse`` one per group of arms that train in one pass;
    ``processes`` > 1: each job trains on that many processes of its node (``--nproc``:
    torchrun DDP over the node's GPUs)."""
    from kdzoo.run.fusion import fusion_groups

    groups = fusion_groups([runner.Member(name, spec, rundir.arm_dir(grid_dir, name)) for name, spec in arms], fuse)
    jobs = []
    for group in groups:
        names = [m.name for m in group]
        label = f"arm-{names[0]}" if len(group) == 1 else f"pass-{names[0]}-{len(group)}"
        argv = arm_argv(spec_path, ",".join(names), grid_dir, shared, force) + (["--nproc", str(processes)] if processes else [])
        jobs.append(Job("arm", ", ".join(names), label, argv,
                        rundir.launch_log(grid_dir, label), group[0].run_dir, spec_threads=group[0].spec.threads,
                        members=[(m.name, m.run_dir) for m in group] if len(group) > 1 else []))
    return jobs


def _with_threads(jobs: list[Job], threads_for: Callable[[int], int | None]) -> None:
    """Each job's environment: unbuffered output (a log reads live, and survives a kill)
    and its torch threads (see :data:`kdzoo.run.launchers.jobs.THREAD_ENVS`)."""
    threads = threads_for(len(jobs)) if jobs else None
    for job in jobs:
        job.env.update({"PYTHONUNBUFFERED": "1", **thread_env(job.spec_threads, threads)})


def _arm_outcome(arm_dir: Path, job: Job, code: int | None, error: str | None) -> str:
    """One line on how an arm of a job ended; an arm whose job died without saying why gets
    its failed.json written here, so the grid and ``kdzoo status`` report it."""
    if rundir.is_finished(arm_dir):
        summary = json.loads((arm_dir / rundir.SUMMARY_FILE).read_text())
        top1 = summary["final"].get(metric_key("test", "top1", summary["role"]))
        return f"finished, test top-1 {top1:.4f} in {summary['wall_time_s']:.1f} s" if top1 is not None else "finished"
    failed = _failed_reason(arm_dir)
    if failed is None:
        failed = error or f"exit code {code}: {last_error(job.log)}"
        write_json(arm_dir / rundir.FAILED_FILE, {"error": failed, "log": str(job.log), "at": time.time()})
    return f"failed: {failed} (log: {job.log})"


def _failed_reason(run_dir: Path) -> str | None:
    failed = rundir.read_json(run_dir / rundir.FAILED_FILE)
    return None if failed is None or failed.get("error") is None else str(failed["error"])


def arm_result(grid_dir: Path, name: str, spec: AnySpec, not_run: str | None = None) -> dict[str, Any]:
    """The arm's summary, or the failed summary ``run_arms`` would have returned (an arm
    left to another process counts as not finished: the grid is not complete)."""
    arm_dir = rundir.arm_dir(grid_dir, name)
    if rundir.is_finished(arm_dir):
        return json.loads((arm_dir / rundir.SUMMARY_FILE).read_text())
    return runner.failed_summary(spec, not_run or _failed_reason(arm_dir) or "did not finish")
