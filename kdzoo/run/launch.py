"""``kdzoo run ... --nproc N``: torchrun's own launcher (the elastic agent), started in process.

It re-invokes ``python -m kdzoo`` with the same arguments minus ``--nproc`` in N worker
processes on this machine (a standalone c10d rendezvous on a free local port, no
restarts), exactly as ``torchrun --standalone --nproc_per_node=N -m kdzoo ...`` would.
Several machines: run torchrun itself on each, with its rendezvous flags.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid

from kdzoo.errors import KdzooError
from kdzoo.run.distributed import LAUNCHED_ENV


def strip_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def first_failure(failures: dict[int, object]) -> tuple[int | None, str, int]:
    """(rank, message, exit code) of the rank that failed first on its own: kdzoo's entry
    in the error files, secondary failures (a broken collective) last; torchrun's own
    record (a signal, an exit code) when no rank wrote one. Rank ``None``: every rank
    failed with the same message (a bad spec, a grid with failed arms)."""
    recorded = []
    for global_rank, failure in failures.items():
        entry = (getattr(failure, "error_file_data", None) or {}).get("kdzoo")
        if isinstance(entry, dict):
            recorded.append((bool(entry.get("secondary")), float(entry.get("time", 0)), global_rank, entry))
    if recorded:
        _, _, global_rank, entry = min(recorded, key=lambda r: r[:3])
        messages = {str(r[3].get("error")) for r in recorded}
        together = len(recorded) == len(failures) and len(messages) == 1 and not any(r[0] for r in recorded)
        return None if together else global_rank, str(entry.get("error")), int(entry.get("exit_code", 1))
    global_rank = min(failures, key=lambda r: getattr(failures[r], "timestamp", 0))
    failure = failures[global_rank]
    return global_rank, str(getattr(failure, "message", "") or "failed"), int(getattr(failure, "exitcode", 1) or 1)


class RankFailed(KdzooError):
    """One rank of a ``--nproc`` run failed; the message is that rank's."""


def launch_local(nproc: int, argv: list[str]) -> None:
    """Run ``python -m kdzoo *argv`` in ``nproc`` processes under torchrun's elastic agent."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port: two runs on one machine do not collide
        max_restarts=0,
        monitor_interval=0.1,
    )
    saved = {k: os.environ.get(k) for k in (LAUNCHED_ENV, "OMP_NUM_THREADS")}
    os.environ[LAUNCHED_ENV] = "1"
    # torchrun's default too: N processes with all-core thread pools each would oversubscribe.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    agent_log = logging.getLogger("torch.distributed.elastic")
    level = agent_log.level
    agent_log.setLevel(logging.CRITICAL)  # a failure is reported below, once, as kdzoo reports errors
    try:
        elastic_launch(config, sys.executable)("-m", "kdzoo", *argv)
    except ChildFailedError as exc:
        global_rank, message, code = first_failure(exc.failures)
        error = RankFailed(message if global_rank is None else f"rank {global_rank} of {nproc}: {message}")
        error.exit_code = code
        raise error from None
    finally:
        agent_log.setLevel(level)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def nproc_callback(ctx, _param, value: int | None) -> None:
    """``--nproc N`` (click callback): start the torchrun launcher with the same command
    line minus ``--nproc``, and end this process with its result."""
    if value is None:
        return
    from kdzoo.run import distributed

    if distributed.requested():
        raise KdzooError("--nproc starts torchrun's launcher itself: under torchrun, leave it out")
    argv = strip_nproc(sys.argv[1:])
    if "--launcher" in argv and argv[argv.index("--launcher") + 1 :][:1] != ["inline"]:
        raise KdzooError("--nproc runs one spec on several processes; with --launcher, give each arm its processes instead")
    launch_local(value, argv)
    ctx.exit(0)
