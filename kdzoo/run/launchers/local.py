"""``--launcher local``: jobs as child processes of this one, at most K at a time."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from kdzoo.run.launchers.jobs import Job, open_log

POLL_S = 0.2


def run_local(jobs: list[Job], max_parallel: int, started: Callable[[Job, str], None],
              finished: Callable[[Job, int | None, str | None], None]) -> None:
    """Run ``jobs`` (in order, ``max_parallel`` at once); ``started(job, where)`` when one
    starts, ``finished(job, exit_code, error)`` when it ends.

    The children share this process group, so a Ctrl-C in the terminal reaches them too
    (each stops cleanly, keeping its last finished epoch). Whatever still runs when this
    function leaves by an exception gets a SIGINT too (a KeyboardInterrupt: its cleanup
    runs), then a kill if it has not stopped within 30 s. A SIGTERM to this process (a
    scheduler's or ``kill``'s) leaves it that way as well, where by default it would die
    at once and leave its children training.
    """
    waiting = list(jobs)
    running: list[tuple[Job, subprocess.Popen, Any]] = []
    with _sigterm_as_exit():
        _run(waiting, running, max_parallel, started, finished)


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit (so ``finally`` blocks run) while inside; signal handlers
    can only be set from the main thread, elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(waiting: list[Job], running: list[tuple[Job, subprocess.Popen, Any]], max_parallel: int,
         started: Callable[[Job, str], None], finished: Callable[[Job, int | None, str | None], None]) -> None:
    try:
        while waiting or running:
            while waiting and len(running) < max_parallel:
                job = waiting.pop(0)
                out = open_log(job)
                process = subprocess.Popen(job.argv, cwd=job.cwd, env={**os.environ, **job.env}, stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL)
                running.append((job, process, out))
                started(job, f"pid {process.pid}")
            time.sleep(POLL_S)
            for entry in [e for e in running if e[1].poll() is not None]:
                running.remove(entry)
                job, process, out = entry
                out.close()
                finished(job, process.returncode, None)
    finally:
        for job, process, out in running:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for job, process, out in running:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            out.close()
