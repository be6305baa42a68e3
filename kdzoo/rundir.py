"""The run-directory format: the one owner of every file name, tensor-key prefix and of
what "finished" means. Torch-free (the CLI, the report and spec validation read it).

A run directory::

    spec.yaml            the resolved spec (every default filled in)
    metrics.jsonl        one JSON record per finished epoch
    state/last.safetensors  resumable state of the last finished epoch: student
                         (``student.``), loss (``losses.``) and optimizer (``optimizer.``)
                         tensors, with epoch, step and the optimizer's other state in
                         the header (one file: one atomic commit)
    model.safetensors    the trained network's body (``body.``) and loss tensors (``losses.``);
                         a student that predicts through a loss's head (SimKD) also holds
                         the head (``head.``), which its manifest describes under ``head``
    model.json           the checkpoint manifest (format, model reference, spec, versions, metrics)
    summary.json         written last: its presence (with the checkpoint) marks the run finished
    failed.json          a grid arm that stopped (the error)
    running.json         while a process runs it: pid, host, start time (removed at the end;
                         left behind by a kill, which ``kdzoo status`` tells from a live run)

A grid directory holds one run directory per arm under ``arms/``, ``grid.json`` (every
arm planned so far and the teacher cache entries each needs: what ``kdzoo status`` lists)
and, when a launcher ran it, ``launch/`` (one log per job, submitit's folder). Inline
teachers are cached by content under ``OUTPUT_DIR/teachers/NAME-DIGEST``, trained in
``NAME-DIGEST.partial`` under the lock ``NAME-DIGEST.lock``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdzoo.errors import KdzooError

SPEC_FILE = "spec.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
MODEL_FILE = "model.safetensors"
MANIFEST_FILE = "model.json"
FAILED_FILE = "failed.json"
STATE_DIR = "state"
STATE_FILE = "last.safetensors"
RUNNING_FILE = "running.json"
ARMS_DIR = "arms"
TEACHERS_DIR = "teachers"
GRID_FILE = "grid.json"
LAUNCH_DIR = "launch"
SUBMITIT_DIR = "submitit"
LOG_SUFFIX = ".log"
PARTIAL_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"

CHECKPOINT_FORMAT = "kdzoo-checkpoint/1"

# Tensor-key prefixes.
BODY_PREFIX = "body."  # Network.body's state dict, in model.safetensors
LOSSES_PREFIX = "losses."  # the loss modules' state (connectors, memory banks), both files
HEAD_PREFIX = "head."  # the head a loss supplies for the student to predict through (SimKD), in model.safetensors
STUDENT_PREFIX = "student."  # the whole trained Network's state dict, in state/
OPTIMIZER_PREFIX = "optimizer."  # optimizer tensors, in state/: optimizer.<param index>.<name>


def read_json(path: str | Path) -> dict[str, Any] | None:
    """A JSON object file of a run directory (markers, failures, summaries), or None when it
    is missing, unreadable or not an object: readers of progress never fail on a torn file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_finished(run_dir: str | Path) -> bool:
    """A run finished when its summary, checkpoint and resolved spec are all there."""
    run_dir = Path(run_dir)
    return all((run_dir / name).is_file() for name in (SUMMARY_FILE, MODEL_FILE, MANIFEST_FILE, SPEC_FILE))


def has_state(run_dir: str | Path) -> bool:
    """A run that can be resumed: it saved the state of at least one epoch."""
    return state_file(run_dir).is_file()


def state_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / STATE_DIR / STATE_FILE


def arm_dir(grid_dir: str | Path, arm_name: str) -> Path:
    return Path(grid_dir) / ARMS_DIR / arm_name


def arm_dirs(grid_dir: str | Path) -> list[Path] | None:
    """The arm directories of a grid, sorted by name; None when ``grid_dir`` is no grid."""
    arms = Path(grid_dir) / ARMS_DIR
    if not arms.is_dir():
        return None
    return sorted(p for p in arms.iterdir() if p.is_dir())


def teacher_cache_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / TEACHERS_DIR


def teacher_partial_dir(teacher: str | Path) -> Path:
    """Where a cached teacher trains before it is published under its final name."""
    teacher = Path(teacher)
    return teacher.with_name(teacher.name + PARTIAL_SUFFIX)


def teacher_lock_file(teacher: str | Path) -> Path:
    teacher = Path(teacher)
    return teacher.with_name(teacher.name + LOCK_SUFFIX)


def launch_log(grid_dir: str | Path, job_name: str) -> Path:
    """The output of one launched job (a teacher or an arm) of a grid."""
    return Path(grid_dir) / LAUNCH_DIR / f"{job_name}{LOG_SUFFIX}"


def submitit_dir(grid_dir: str | Path) -> Path:
    return Path(grid_dir) / LAUNCH_DIR / SUBMITIT_DIR


def manifest_path(weights: Path) -> Path:
    return weights.with_name(MANIFEST_FILE) if weights.name == MODEL_FILE else weights.with_suffix(".json")


def resolve_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Accept a run dir, a ``.safetensors`` file or its ``.json``; return (weights, manifest)."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    manifest_file = manifest_path(path)
    if not path.is_file():
        raise KdzooError(f"checkpoint not found: {path}")
    if not manifest_file.is_file():
        raise KdzooError(f"checkpoint {path} has no manifest {manifest_file.name} beside it (not written by kdzoo?)")
    try:
        manifest = json.loads(manifest_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KdzooError(f"checkpoint manifest {manifest_file} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT or "model" not in manifest:
        raise KdzooError(f"{manifest_file} is not a {CHECKPOINT_FORMAT} manifest")
    return path, manifest


def is_checkpoint_file(path: Path) -> bool:
    """A run dir, a .safetensors file, or a JSON file that is a kdzoo manifest."""
    if path.is_dir() or path.suffix == ".safetensors":
        return True
    if path.suffix == ".json" and path.is_file():
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return False
        return isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT
    return False
