"""``--launcher slurm``: the jobs as a SLURM job array, submitted and watched through
submitit (the one module that imports it, and only when a grid is launched this way).

Each array task runs one kdzoo job (see :mod:`.jobs`) on its node, with the node's own
environment (CUDA_VISIBLE_DEVICES and SLURM's variables), in the directory the grid
was started from. A task that reaches its time limit or is preempted is requeued by
submitit and the arm resumes from its last finished epoch.

``KDZOO_SUBMITIT_CLUSTER=local`` (or ``debug``) runs the same path with submitit's
local executor: a ``launcher:`` section can be tried, and is tested, without a cluster.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdzoo.errors import KdzooError
from kdzoo.run.launchers import LaunchOptions
from kdzoo.run.launchers.jobs import Job
from kdzoo.spec import LauncherSpec

CLUSTER_ENV = "KDZOO_SUBMITIT_CLUSTER"
POLL_S = {"slurm": 30.0}  # how often job states are read: sparingly on a real scheduler
DEFAULT_POLL_S = 1.0


class SubmititJob:
    """What submitit pickles and calls on the node. ``checkpoint`` makes it requeueable:
    submitit calls it on timeout or preemption and submits the same job again."""

    def __init__(self, job: Job):
        self.job = job

    def __call__(self) -> int:
        return self.job.run()

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(SubmititJob(self.job))


def settings_with_flags(settings: LauncherSpec | None, options: LaunchOptions) -> LauncherSpec:
    """The spec's ``launcher:`` section with the command-line flags on top."""
    flags = {"partition": options.partition, "time_min": options.time_min, "gpus_per_arm": options.gpus_per_arm,
             "max_parallel": options.jobs}
    base = (settings or LauncherSpec()).model_dump()
    return LauncherSpec.model_validate({**base, **{k: v for k, v in flags.items() if v is not None}})


def executor_parameters(settings: LauncherSpec, name: str) -> dict[str, Any]:
    """submitit's ``update_parameters`` for one array: shared names where submitit has
    them (translated per cluster), ``slurm_*`` for SLURM's own, then ``extra`` verbatim."""
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": settings.time_min,
        "gpus_per_node": settings.gpus_per_arm,
        "cpus_per_task": settings.cpus_per_arm,
        "mem_gb": settings.mem_gb,
        "slurm_partition": settings.partition,
        "slurm_array_parallelism": settings.max_parallel,
    }
    return {**{k: v for k, v in params.items() if v is not None}, **settings.extra}


def run_submitit(jobs: list[Job], settings: LauncherSpec, folder: Path, name: str,
                 started: Callable[[Job, str], None], finished: Callable[[Job, int | None, str | None], None]) -> None:
    """Submit ``jobs`` as one array and wait for every task; report each as in :mod:`.local`."""
    import submitit

    if not jobs:
        return
    cluster = os.environ.get(CLUSTER_ENV) or None  # None: SLURM when sbatch is there
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        executor.update_parameters(**executor_parameters(settings, name))
    except (ValueError, NameError, AssertionError, RuntimeError) as exc:
        where = f"cluster '{cluster}'" if cluster else "this machine (no SLURM found? set KDZOO_SUBMITIT_CLUSTER=local to run here)"
        raise KdzooError(f"--launcher slurm: submitit refused the launcher settings on {where}: {exc}") from None
    with executor.batch():
        submitted = [executor.submit(SubmititJob(job)) for job in jobs]
    by_id = {}
    for job, task in zip(jobs, submitted):
        by_id[task.job_id] = job
        started(job, f"{executor.cluster} job {task.job_id}")
    poll = POLL_S.get(executor.cluster, DEFAULT_POLL_S)
    for task in submitit.helpers.as_completed(submitted, poll_frequency=poll):
        job = by_id[task.job_id]
        try:
            finished(job, int(task.result()), None)
        except Exception as exc:  # the task died (killed, out of memory, node failure): its arm fails, the grid goes on
            reason = str(exc).strip().splitlines()
            finished(job, None, f"{type(exc).__name__}: {reason[0] if reason else ''} (submitit logs: {task.paths.folder})")
