"""File I/O of a run: atomic writes, safetensors tensors, and the model checkpoint.

Nothing here unpickles: a checkpoint from a stranger can only hold tensors and JSON.
Every write goes to a temporary file in the same directory and is renamed into place,
so an interrupted run never leaves a half-written file behind. File names and key
prefixes come from :mod:`kdzoo.rundir`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kdzoo
from kdzoo import rundir
from kdzoo.errors import KdzooError, StorageError

if TYPE_CHECKING:
    import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: str | Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write) -> None:
    """``write(tmp_path)``, flush it to disk, then rename onto ``path``: a reader (or a run
    resumed after a kill, a crash or a full disk) sees the old file or the new, never a mix.

    Files get the usual umask-respecting mode (a shared teacher cache stays readable), not
    mkstemp's 0600. A failed write (disk full, no permission) is one ``StorageError``
    naming the path; the previous file is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # after the write: a writer may recreate the file
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent, directory=True)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}; the previous version is kept") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)

    atomic_write(Path(path), write)


def write_csv(path: Path, rows: list[list[Any]]) -> None:
    """Rows (the first one the header) as a CSV file, written atomically."""
    import csv
    import io

    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    write_text(path, buffer.getvalue())


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
    from safetensors import SafetensorError

    def write(tmp: str) -> None:
        try:
            save_file(clean, tmp, metadata=metadata)
        except SafetensorError as exc:  # safetensors reports I/O errors (ENOSPC) as its own
            raise OSError(str(exc)) from None

    atomic_write(Path(path), write)


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


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """The file's sha256, read in chunks; remembered per (path, size, mtime), so the teacher
    weights and plugin files a grid's arms share are hashed once per process."""
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def save_checkpoint(directory: Path, tensors: dict[str, torch.Tensor], manifest: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and then ``model.json``, which holds the weights' sha256:
    a manifest and weights that do not belong together are detected when loaded."""
    weights = Path(directory) / rundir.MODEL_FILE
    save_tensors(weights, tensors)
    write_json(rundir.manifest_path(weights), {"format": rundir.CHECKPOINT_FORMAT, **manifest, "weights_sha256": file_sha256(weights)})
    return weights


def verify_checkpoint(weights: Path, manifest: dict[str, Any]) -> None:
    """Refuse weights whose sha256 is not the one their manifest recorded."""
    expected = manifest.get("weights_sha256")
    if expected is not None and file_sha256(weights) != expected:
        raise KdzooError(
            f"checkpoint {weights} does not match its manifest {rundir.manifest_path(weights).name} (sha256 differs): "
            "the pair was not written together; retrain or restore it"
        )
