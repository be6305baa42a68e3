"""File I/O of a run: atomic writes, safetensors tensors, and the model checkpoint.

Nothing here unpickles: a checkpoint from a stranger can only hold tensors and JSON.
Every write goes to a temporary file in the same directory and is renamed into place,
so an interrupted run never leaves a half-written file behind. File names and key
prefixes come from :mod:`kdzoo.rundir`.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kdzoo
from kdzoo import rundir
from kdzoo.errors import KdzooError

if TYPE_CHECKING:
    import torch


def atomic_write(path: Path, write) -> None:
    """``write(tmp_path)`` then rename onto ``path``; the temporary file never survives."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)

    atomic_write(Path(path), write)


def write_json(path: Path, data: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(data, indent=indent, default=str) + "\n")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors needs contiguous CPU tensors that share no storage (tied weights)."""
    from safetensors.torch import save_file

    seen: set[tuple[int, int]] = set()
    clean = {}
    for key, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if ident in seen:
            tensor = tensor.clone()
        seen.add(ident)
        clean[key] = tensor
    atomic_write(Path(path), lambda tmp: save_file(clean, tmp, metadata=metadata))


def load_tensors_with_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return {key: fh.get_tensor(key) for key in fh.keys()}, dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise KdzooError(f"cannot read safetensors file {path}: {exc}") from None


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors_with_metadata(path)[0]


def versions(plugin_versions: dict[str, str | None] | None = None) -> dict[str, Any]:
    import torch

    return {
        "kdzoo": kdzoo.__version__,
        "plugin_api": ".".join(map(str, kdzoo.PLUGIN_API_VERSION)),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "plugins": plugin_versions or {},
    }


def save_checkpoint(directory: Path, tensors: dict[str, torch.Tensor], manifest: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``directory``; manifest last."""
    weights = Path(directory) / rundir.MODEL_FILE
    save_tensors(weights, tensors)
    write_json(rundir.manifest_path(weights), {"format": rundir.CHECKPOINT_FORMAT, **manifest})
    return weights
