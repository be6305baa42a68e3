"""One launched job: the command line that trains a cached teacher or runs one arm, its
environment, and where its output goes.

An arm's job is ``python -m kdzoo run SPEC --arms ARM --out GRID`` with the grid's own
``--set``, ``--plugins-dir`` and ``--force``: the spec is read, overridden and validated
by the job exactly as by the grid, so the arm's resolved spec — what grid skipping,
``--resume`` and the teacher cache compare — is the one an inline grid would write. A
fused group's job (``--fuse on``) names all its arms (``--arms A,B,C``): the job trains
them in one pass, as an inline grid would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


# torch sizes its CPU thread pool from these at start-up. Read by the job, not written
# into the spec, because ``threads`` is part of the resolved spec: setting it per job
# would make a launched arm's spec differ from the inline arm's, so a rerun could not
# skip or resume it, and its teachers would get a new cache key and train again.
THREAD_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class Job:
    kind: str  # "teacher" or "arm"
    name: str  # the teacher's or the arm's name, as the user reads it
    label: str  # unique among the grid's jobs: its log file's name
    argv: list[str]
    log: Path
    run_dir: Path  # the arm's directory, or the teacher's cache entry
    cwd: str = field(default_factory=os.getcwd)  # relative output_dir in the spec: same cwd as the grid
    spec_threads: int | None = None  # the spec's own `threads`, which wins over the launcher's count
    env: dict[str, str] = field(default_factory=dict)  # added to the environment the job finds
    members: list[tuple[str, Path]] = field(default_factory=list)  # a fused group's arms and their directories

    @property
    def arms(self) -> list[tuple[str, Path]]:
        """The arms this job runs, each with its directory (one, unless a fused group)."""
        return self.members or [(self.name, self.run_dir)]

    def run(self) -> int:
        """Run to the end, output appended to the log; the exit code. Used where the job
        is executed in place (submitit's worker), with that machine's environment."""
        with open_log(self) as out:
            return subprocess.run(self.argv, cwd=self.cwd, env={**os.environ, **self.env},
                                  stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode


def open_log(job: Job):
    job.log.parent.mkdir(parents=True, exist_ok=True)
    # A stream, appended (each attempt under its own header), not an atomic rewrite: the
    # log is read while the job runs, and a rerun's output should not hide the first one's.
    out = open(job.log, "a", buffering=1)
    out.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(job.argv)}\n")
    out.flush()
    return out


def shared_args(overrides: tuple[str, ...], plugins_dirs: tuple[Path, ...]) -> list[str]:
    args: list[str] = []
    for item in overrides:
        args += ["--set", item]
    for folder in plugins_dirs:
        args += ["--plugins-dir", str(Path(folder).resolve())]
    return args


def arm_argv(spec_path: Path, arm: str, grid_dir: Path, shared: list[str], force: bool) -> list[str]:
    # Arm names are letters, digits, '.', '-', '_' (kdzoo.spec.matrix): a glob of one arm.
    return [sys.executable, "-m", "kdzoo", "run", str(Path(spec_path).resolve()), "--arms", arm,
            "--out", str(Path(grid_dir).resolve()), *shared, "--quiet", *(["--force"] if force else [])]


def teacher_argv(spec_path: Path, arm: str, teacher: str, shared: list[str]) -> list[str]:
    return [sys.executable, "-m", "kdzoo.run.launchers.worker", str(Path(spec_path).resolve()),
            "--arm", arm, "--teacher", teacher, *shared, "--quiet"]


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_env(spec_threads: int | None, threads: int | None) -> dict[str, str]:
    """The thread count a job's torch should use, unless the spec fixes ``threads`` (the
    spec wins: kdzoo sets it at run time) or the user already exported one."""
    if spec_threads is not None or threads is None or any(name in os.environ for name in THREAD_ENVS):
        return {}
    return {name: str(threads) for name in THREAD_ENVS}


def last_error(log: Path) -> str:
    """The reason a job gave for failing: its ``Error:`` line, else its last line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    errors = [line for line in lines if line.startswith("Error:")]
    return (errors or lines or ["no output"])[-1]
