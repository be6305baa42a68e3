"""Several processes: DDP under torchrun (or ``kdzoo run --nproc N``, which starts torchrun's
own launcher). Single-process runs never touch torch.distributed: every helper here is
then the plain single-process behaviour.

- Process group: from torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
  ``MASTER_ADDR``/``MASTER_PORT``), backend ``cpu:gloo,cuda:nccl`` where CUDA and NCCL
  exist (CPU tensors through gloo, CUDA tensors through NCCL), ``gloo`` elsewhere.
- Only rank 0 writes files and prints: decisions that depend on the filesystem (the run
  directory, a finished grid arm, a cached teacher) are taken by rank 0 and broadcast.
- Errors: each rank records its error in torchrun's per-rank error file
  (``TORCHELASTIC_ERROR_FILE``) with a ``kdzoo`` entry; the ``--nproc`` launcher prints
  the first failing rank's one-line message. A rank that stops only because another
  one failed (a broken collective) records itself as secondary.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdzoo.errors import KdzooError
from kdzoo.run.checkpoint import write_json

LAUNCHED_ENV = "KDZOO_LAUNCHED"  # set by `kdzoo run --nproc`: ranks leave the message to the launcher
ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"


class PeerFailed(KdzooError):
    """This rank stopped because another rank failed (its error is the one to report)."""

    exit_code = 1


def requested() -> bool:
    """True in a process started by torchrun (or any launcher setting ``WORLD_SIZE``)."""
    return "WORLD_SIZE" in os.environ


def active() -> bool:
    if not requested():
        return False
    import torch.distributed as dist

    return dist.is_initialized()


def rank() -> int:
    from kdzoo.api.distributed import rank as api_rank

    return api_rank() if active() else 0


def world_size() -> int:
    from kdzoo.api.distributed import world_size as api_world_size

    return api_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def is_main() -> bool:
    return rank() == 0


def backend() -> str:
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def init_from_env(quiet_stdout: bool = False) -> None:
    """Join torchrun's process group (idempotent; nothing without ``WORLD_SIZE``).

    ``quiet_stdout``: ranks other than 0 send stdout to /dev/null (the CLI: one table, one log)."""
    if not requested():
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and local < torch.cuda.device_count():
        torch.cuda.set_device(local)  # NCCL maps each rank to the current device
    dist.init_process_group(backend=backend())
    if quiet_stdout and dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)


def shutdown() -> None:
    if active():
        import torch.distributed as dist

        dist.destroy_process_group()


# ----------------------------------------------------------------------------- collectives
def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (the value itself in a single process)."""
    if not active():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        broadcast_object(None)  # through the CPU backend: a NCCL barrier would guess a device


def on_main(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``function(...)`` run on rank 0 only, its result (or its KdzooError) on every rank.

    For filesystem decisions that must be the same everywhere: the other ranks could
    otherwise see a file that rank 0 has just written, or race it to a rename."""
    if not active():
        return function(*args, **kwargs)
    outcome: tuple[str, Any, int] | None = None
    error: BaseException | None = None
    if is_main():
        try:
            outcome = ("ok", function(*args, **kwargs), 0)
        except KdzooError as exc:
            outcome, error = ("error", str(exc), exc.exit_code), exc
        except Exception as exc:
            outcome, error = ("error", f"{type(exc).__name__}: {exc}", 1), exc
    status, value, code = broadcast_object(outcome)
    if status == "ok":
        return value
    if error is not None:
        raise error
    failed = PeerFailed(f"rank 0 failed: {value}")  # reported by rank 0, not here
    failed.exit_code = code
    raise failed


def broadcast_buffers(module) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank, in place: DDP runs here with
    ``broadcast_buffers=False`` (no memory bank sent every step), so ranks agree on
    buffers only when this is called, before an evaluation."""
    if not active():
        return
    import torch.distributed as dist

    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Per-rank figures (a rank's mean loss over its shards) averaged over ranks."""
    if not active() or not values:
        return values
    import torch
    import torch.distributed as dist

    keys = sorted(values)
    buffer = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(buffer)
    return {k: float(v) / world_size() for k, v in zip(keys, buffer.tolist())}


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any one (ranks then stop together)."""
    if not active():
        return flag
    import torch
    import torch.distributed as dist

    buffer = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.all_reduce(buffer, op=dist.ReduceOp.MAX)
    return bool(buffer.item())


def rank_seed(seed: int, epoch: int, rank_: int) -> int:
    """A seed per (seed, epoch, rank): each rank augments its shard differently, and a run
    is reproducible for a given world size."""
    import hashlib

    digest = hashlib.sha256(f"kdzoo:{seed}:{epoch}:{rank_}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# ----------------------------------------------------------------------------- errors
def is_collective_failure(exc: BaseException | None) -> bool:
    """A broken collective (what a rank sees when another rank died under it), also when
    a plugin guard wrapped it."""
    import torch.distributed as dist

    while exc is not None:
        if isinstance(exc, dist.DistError):
            return True
        if isinstance(exc, RuntimeError) and any(s in str(exc) for s in ("Connection closed by peer", "Connection reset by peer", "[gloo", "NCCL")):
            return True
        exc = exc.__cause__
    return False


def record_error(exc: BaseException, secondary: bool) -> None:
    """Write this rank's error where torchrun's agent reads it (the ``--nproc`` launcher too)."""
    path = os.environ.get(ERROR_FILE_ENV)
    if not path:
        return
    from kdzoo.host.build import debug_enabled

    code = getattr(exc, "exit_code", 1)
    user_error = _is_user_error(exc)
    if not user_error:
        message = f"{type(exc).__name__}: {exc}"
    else:  # click's usage errors hold their text in format_message
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    # torchrun prints this as the root cause's "traceback": a user error is its one line.
    callstack = message if user_error and not debug_enabled() else traceback.format_exc()
    data = {
        "message": {"message": message, "extraInfo": {"py_callstack": callstack, "timestamp": str(int(time.time()))}},
        "kdzoo": {"error": message, "exit_code": code, "time": time.time(), "secondary": secondary, "rank": rank()},
    }
    try:
        write_json(Path(path), data, indent=None)
    except KdzooError:
        pass  # the agent then reports the exit code alone


def _is_user_error(exc: BaseException) -> bool:
    """kdzoo's errors and click's usage errors: one line for the user, no traceback."""
    import click

    return isinstance(exc, (KdzooError, click.ClickException))


def record_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a CLI command: join torchrun's process group, record a failure for the
    launcher, leave the group at the end. The identity outside torchrun."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not requested():
            return command(*args, **kwargs)
        init_from_env(quiet_stdout=True)
        try:
            return command(*args, **kwargs)
        except Exception as exc:
            secondary = isinstance(exc, PeerFailed) or is_collective_failure(exc)
            record_error(exc, secondary)
            if secondary:  # one line, not a traceback: the failing rank has the story
                if not os.environ.get(LAUNCHED_ENV):
                    print(f"rank {rank()}: stopped because another rank failed", file=sys.stderr)
                raise SystemExit(getattr(exc, "exit_code", 1)) from None
            if _is_user_error(exc) and os.environ.get(LAUNCHED_ENV):
                raise SystemExit(exc.exit_code) from None  # the launcher prints it once
            raise
        finally:
            shutdown()

    return wrapper
