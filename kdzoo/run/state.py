"""Resumable training state: the student, the losses and the optimizer after an epoch.

One safetensors file holds the tensors and, in its header, the metadata (epoch, step,
the optimizer's non-tensor state; in a run with stages, the stage the optimizer belongs
to and the epochs done in it): one atomic rename commits both, so a kill at any moment
leaves either the previous epoch's state or the new one, never a mix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdzoo import rundir
from kdzoo.errors import KdzooError
from kdzoo.run.checkpoint import load_tensors_with_metadata, save_tensors
from kdzoo.spec.describe import spec_differences

STATE_FORMAT = "kdzoo-state/2"
META_KEY = "kdzoo_state"


def state_tensors(network: nn.Module, losses: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors = {f"{rundir.STUDENT_PREFIX}{k}": v for k, v in network.state_dict().items()}
    tensors.update({f"{rundir.LOSSES_PREFIX}{k}": v for k, v in losses.state_dict().items()})
    optim = optimizer.state_dict()
    scalar_state: dict[str, dict[str, Any]] = {}
    for idx, entry in optim["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"{rundir.OPTIMIZER_PREFIX}{idx}.{key}"] = value
            else:
                scalar_state.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": optim["param_groups"], "scalar_state": scalar_state}


def save_state(run_dir: Path, epoch: int, step: int, network: nn.Module, losses: nn.Module, optimizer: torch.optim.Optimizer, spec: dict[str, Any],
               world_size: int = 1, stage: dict[str, Any] | None = None) -> None:
    """Save the state after ``epoch`` epochs, with the resolved spec it belongs to (and the
    number of processes that trained it; ``stage``: the stage the optimizer belongs to, in
    a run with stages, see :mod:`kdzoo.run.stages`)."""
    tensors, optimizer_meta = state_tensors(network, losses, optimizer)
    meta = {"format": STATE_FORMAT, "epoch": epoch, "step": step, "optimizer": optimizer_meta, "spec": spec}
    if world_size > 1:  # absent in one process: its state files stay what they were
        meta["world_size"] = world_size
    if stage is not None:  # absent without stages, likewise
        meta["stage"] = stage
    save_tensors(rundir.state_file(run_dir), tensors, metadata={META_KEY: json.dumps(meta)})


def state_meta(run_dir: Path) -> dict[str, Any] | None:
    """The metadata of the saved state (epoch, step, stage...) without its tensors; None
    when there is none, or it cannot be read (``load_state`` then says why)."""
    from safetensors import safe_open

    path = rundir.state_file(run_dir)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})[META_KEY])
    except Exception:  # missing, torn, not ours: load_state reports it
        return None
    return meta if isinstance(meta, dict) else None


def _strip(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_state(run_dir: Path, network: nn.Module, losses: nn.Module, optimizer: torch.optim.Optimizer, spec: dict[str, Any], force: bool = False,
               world_size: int = 1, log=None) -> tuple[int, int]:
    """Restore the last saved epoch; (0, 0) when the run saved none.

    Refuses state saved under a different resolved spec (listing the differing fields)
    unless ``force``: resuming it would silently mix two experiments. Every rank of a
    run on several processes loads the same file. Another number of processes is
    allowed (more GPUs for the rest of a run), with a note through ``log``: data order
    and augmentation then differ from an uninterrupted run."""
    path = rundir.state_file(run_dir)
    if not path.is_file():
        return 0, 0
    tensors, header = load_tensors_with_metadata(path)
    try:
        meta = json.loads(header[META_KEY])
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {STATE_FORMAT!r}")
        epoch, step = int(meta["epoch"]), int(meta["step"])
        optimizer_meta = meta["optimizer"]
        saved_spec = meta["spec"]
        saved_world_size = int(meta.get("world_size", 1))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise KdzooError(f"{path} is not a kdzoo training state ({exc}); remove it to start the run over") from None
    if saved_spec != spec and not force:
        differences = "; ".join(spec_differences(saved_spec, spec))
        raise KdzooError(
            f"{run_dir} was started with a different spec ({differences}); resuming would mix two experiments. "
            "Use --force to resume anyway, or another --out to start afresh"
        )
    if saved_world_size != world_size and log is not None:
        log(f"note: {run_dir} was trained on {saved_world_size} process(es), resumed on {world_size}: "
            "data order and augmentation differ from an uninterrupted run from here on")
    try:
        network.load_state_dict(_strip(tensors, rundir.STUDENT_PREFIX))
        losses.load_state_dict(_strip(tensors, rundir.LOSSES_PREFIX))
        optim_state: dict[int, dict[str, Any]] = {}
        for key, value in _strip(tensors, rundir.OPTIMIZER_PREFIX).items():
            idx, name = key.split(".", 1)
            optim_state.setdefault(int(idx), {})[name] = value
        for idx, entry in optimizer_meta["scalar_state"].items():
            optim_state.setdefault(int(idx), {}).update(entry)
        optimizer.load_state_dict({"state": optim_state, "param_groups": optimizer_meta["param_groups"]})
    except (RuntimeError, KeyError, ValueError) as exc:
        raise KdzooError(f"{path} does not match this run's model, losses or optimizer: {exc}") from None
    return epoch, step
