"""Feature taps: forward hooks on module paths, as torchdistill does (no model surgery)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from torch import Tensor, nn

from kdzoo.errors import KdzooError


def _first_tensor(output: object) -> Tensor:
    """Hooked modules may return tuples (HF attention returns (context, probs))."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, Tensor):
                return item
    raise TypeError(f"tapped module returned {type(output).__name__}, not a tensor")


@contextmanager
def tapped(network: nn.Module, paths: Iterable[str], *, raw: bool = False) -> Iterator[dict[str, object]]:
    """Record the forward outputs of ``network.submodule(path)`` for each path.

    Yields a dict filled during forwards inside the block (the last call wins).
    ``raw`` keeps the module's output as is; otherwise the first tensor of a tuple.
    """
    captured: dict[str, object] = {}
    handles = []
    get = getattr(network, "submodule", network.get_submodule)
    try:
        for path in dict.fromkeys(paths):  # ordered de-duplication
            try:
                module = get(path)
            except AttributeError as exc:
                raise KdzooError(f"no module at tap path '{path}' in {type(network).__name__}: {exc}") from None

            def hook(_module, _inputs, output, path=path):
                captured[path] = output if raw else _first_tensor(output)

            handles.append(module.register_forward_hook(hook))
        yield captured
    finally:
        for handle in handles:
            handle.remove()
