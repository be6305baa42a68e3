"""Loading weights into a model body: local files (plain state dicts and kdzoo checkpoints)
and state dicts a hub handed out, with the classifier replaceable for pretrained weights."""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from kdzoo.api import BODY_PREFIX, LOSSES_PREFIX, MODEL_FILE, KdzooError
from kdzoo_models.torch_hub import file_sha256

# kdzoo checkpoints store the model body (BODY_PREFIX) beside the tensors of the
# distillation losses (LOSSES_PREFIX), which belong to no model.
# DataParallel / DDP training scripts save every key under "module.".
DATA_PARALLEL_PREFIX = "module."
NESTED_STATE_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema")
SHOWN_PER_PROBLEM = 3


def weights_file(path: str | Path) -> Path:
    """The file a ``weights`` param names: a kdzoo run directory or checkpoint manifest
    (``model.json``) stands for the ``model.safetensors`` beside it."""
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / MODEL_FILE
    elif file.suffix == ".json":
        file = file.with_suffix(".safetensors")
    if not file.is_file():
        raise KdzooError(f"weights file not found: {file}")
    return file


def local_source(path: str | Path) -> dict[str, Any]:
    """What a run's manifest records of weights read from a local file: its path and sha256."""
    file = weights_file(path).resolve()
    return {"file": str(file), "sha256": file_sha256(file)}


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The model tensors of a weights file or kdzoo run directory, wrapper prefixes removed.

    Accepts ``.safetensors``, ``.pt``/``.pth``/``.bin`` (read with ``weights_only=True``
    so that a weights file cannot run code), and a kdzoo run directory or checkpoint
    manifest (``model.json``), which stand for the ``model.safetensors`` beside them.
    """
    file = weights_file(path)
    suffix = file.suffix.lower()
    try:
        if suffix == ".safetensors":
            state = load_file(str(file), device="cpu")
        elif suffix in (".pt", ".pth", ".bin"):
            state = _unnest(torch.load(file, map_location="cpu", weights_only=True), file)
        else:
            raise KdzooError(f"weights file {file}: expected a .safetensors, .pt, .pth or .bin file")
    except KdzooError:
        raise
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise KdzooError(f"cannot read weights file {file}: {exc}") from exc
    return model_tensors(state)


def _unnest(loaded: object, file: Path) -> dict[str, Tensor]:
    if isinstance(loaded, Mapping) and not all(isinstance(v, Tensor) for v in loaded.values()):
        for key in NESTED_STATE_KEYS:
            nested = loaded.get(key)
            if isinstance(nested, Mapping) and nested and all(isinstance(v, Tensor) for v in nested.values()):
                return dict(nested)
    if isinstance(loaded, Mapping) and loaded and all(isinstance(v, Tensor) for v in loaded.values()):
        return dict(loaded)
    raise KdzooError(f"weights file {file} does not hold a state dict (a mapping of names to tensors)")


def model_tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The body's tensors: unwraps kdzoo checkpoints ('body.' + 'losses.') and 'module.' prefixes."""
    keys = list(state)
    if any(k.startswith(BODY_PREFIX) for k in keys) and all(
        k.startswith((BODY_PREFIX, LOSSES_PREFIX)) for k in keys
    ):
        state = {k[len(BODY_PREFIX) :]: v for k, v in state.items() if k.startswith(BODY_PREFIX)}
    if state and all(k.startswith(DATA_PARALLEL_PREFIX) for k in state):
        state = {k[len(DATA_PARALLEL_PREFIX) :]: v for k, v in state.items()}
    return state


def _under(key: str, module_paths: Sequence[str]) -> bool:
    return any(key.startswith(path + ".") for path in module_paths)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN_PER_PROBLEM])
    return shown + (f", ... ({len(items) - SHOWN_PER_PROBLEM} more)" if len(items) > SHOWN_PER_PROBLEM else "")


def load_weights(body: nn.Module, path: str | Path, *, replaceable_head: Sequence[str] = ()) -> dict[str, Any]:
    """Load the weights file at ``path`` into ``body``, or raise a KdzooError naming what does not fit;
    returns the file's path and sha256 (the run's ``initial_weights``).

    ``replaceable_head``: module paths of the classifier that may be missing from the file
    or differ in shape (pretrained weights for another label set); those parameters keep
    their fresh initialisation. Everything else must match exactly.
    """
    load_state(body, read_state_dict(path), str(path), replaceable_head=replaceable_head)
    return local_source(path)


def load_state(body: nn.Module, state: Mapping[str, Tensor], label: str, *, replaceable_head: Sequence[str] = ()) -> None:
    """Load ``state`` (weights named ``label`` in errors) into ``body``, as :func:`load_weights` does."""
    expected = body.state_dict()
    # BatchNorm fills in a num_batches_tracked that older checkpoints lack (torchvision's do).
    missing = [
        k
        for k in expected
        if k not in state and not _under(k, replaceable_head) and not k.endswith(".num_batches_tracked")
    ]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        k for k in expected if k in state and state[k].shape != expected[k].shape and not _under(k, replaceable_head)
    ]
    if missing or unexpected or wrong_shape:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing from the file ({_listing(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} not in the model ({_listing(unexpected)})")
        if wrong_shape:
            shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in wrong_shape]
            problems.append(f"{len(wrong_shape)} with another shape ({_listing(shapes)})")
        hint = ""
        if not replaceable_head and wrong_shape and not missing and not unexpected:
            hint = (
                "; if these are pretrained weights for another label set, set `pretrained: true` "
                "to re-initialise the classifier"
            )
        raise KdzooError(f"weights {label} do not fit the model: " + "; ".join(problems) + hint)
    loadable = with_metadata({k: v for k, v in state.items() if k in expected and v.shape == expected[k].shape}, state)
    # strict=False only lets through the replaceable head, whose absence was allowed above.
    body.load_state_dict(loadable, strict=False)


def with_metadata(new: dict[str, Tensor], old: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``new`` with the ``_metadata`` (module versions) of the state dict ``old`` it was made from:
    modules such as MNASNet read their checkpoint's version when loading."""
    metadata = getattr(old, "_metadata", None)
    if metadata is None or new is old:
        return new
    carried = OrderedDict(new)
    carried._metadata = metadata  # type: ignore[attr-defined]
    return carried
