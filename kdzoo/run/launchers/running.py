"""The marker a run keeps in its directory while a process runs it (``running.json``:
pid, host, start time), so ``kdzoo status`` can tell a live run from one that stopped.

A kill -9 leaves the marker behind; on this host a dead pid (or a pid now used by another
process, told by the process start time) reads as "stopped". On another host the pid
cannot be checked: the marker is taken at its word, with how long ago the run last wrote
its metrics.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kdzoo import rundir
from kdzoo.run.checkpoint import write_json

def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (Linux; None elsewhere)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid``, to tell a reused pid from the original."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


@contextmanager
def running_marker(run_dir: Path) -> Iterator[None]:
    """Hold ``running.json`` in ``run_dir`` for the block; removed however the block ends
    (an exception, Ctrl-C), except by a kill, which status recognises."""
    from kdzoo.run import distributed

    if not distributed.is_main():  # several processes (DDP) run one directory: rank 0 marks it
        yield
        return
    marker = Path(run_dir) / rundir.RUNNING_FILE
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "process_start": _process_start(os.getpid())}
    if os.environ.get("SLURM_JOB_ID"):
        info["slurm_job"] = os.environ["SLURM_JOB_ID"]
    write_json(marker, info)
    try:
        yield
    finally:
        marker.unlink(missing_ok=True)


def read_marker(run_dir: Path) -> dict[str, Any] | None:
    return rundir.read_json(Path(run_dir) / rundir.RUNNING_FILE)


def marker_alive(info: dict[str, Any]) -> bool:
    """Whether the process that wrote the marker still runs (assumed so on another host)."""
    if info.get("host") != socket.gethostname():
        return True
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    fields = _proc_stat(pid)
    if fields is None:
        return True  # no /proc: the pid answered, take it
    if fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent
        return False
    started = info.get("process_start")
    return started is None or len(fields) <= 19 or fields[19] == started
