"""Helpers shared by the model builders: user errors and tap discovery by a probe forward."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kdzoo.api import KdzooError

PROBE_SEED = 0


def unknown_name_error(what: str, name: str, choices: Sequence[str], hint: str = "") -> KdzooError:
    """A KdzooError for an unknown model name that lists the closest known names."""
    close = difflib.get_close_matches(name, list(choices), n=5, cutoff=0.5)
    if not close:  # e.g. 'resnet' against 'resnet18', 'resnet50': prefix matches read better than nothing
        close = [c for c in choices if c.startswith(name)][:5]
    suggestion = f"; close matches: {', '.join(close)}" if close else ""
    return KdzooError(f"unknown {what} '{name}'{suggestion}{hint}")


@dataclass
class ModuleOutput:
    path: str
    module: nn.Module
    input: Any  # first positional argument, or None
    output: Any


@contextmanager
def recorded_outputs(root: nn.Module, paths: Sequence[str] | None = None) -> Iterator[list[ModuleOutput]]:
    """Record the outputs of ``root``'s submodules (all, or those at ``paths``) in completion order.

    A module completes after its children, so among modules returning the same tensor
    object the outermost one is recorded last.
    """
    records: list[ModuleOutput] = []
    modules = (
        [(p, root.get_submodule(p)) for p in paths]
        if paths is not None
        else [(p, m) for p, m in root.named_modules() if p]
    )
    handles = [
        module.register_forward_hook(
            lambda m, args, out, path=path: records.append(ModuleOutput(path, m, args[0] if args else None, out))
        )
        for path, module in modules
    ]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def probing(body: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for a probe forward; every module's own mode is restored after.

    Eval mode keeps the probe from updating batch-norm statistics, so building a model
    leaves it exactly as initialised.
    """
    modes = {module: module.training for module in body.modules()}
    body.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes.items():
            module.training = training


def probe_images(resolution: int, batch: int = 1) -> Tensor:
    """Normalised-looking random images from a private generator (the global RNG is untouched)."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randn(batch, 3, resolution, resolution, generator=generator)


def last_producer(records: Sequence[ModuleOutput], tensor: Any, *, item: int | None = None) -> str | None:
    """Path of the last-completed module whose output is ``tensor`` (or has it at index ``item``).

    Identity, not equality: the module must hand out that very tensor, which is what a
    forward hook on it will see.
    """
    if tensor is None:
        return None
    found = None
    for record in records:
        out = record.output
        if item is not None:
            out = out[item] if isinstance(out, (tuple, list)) and len(out) > item else None
        if out is tensor:
            found = record.path
    return found


def first_producer(records: Sequence[ModuleOutput], tensor: Any, *, item: int | None = None) -> str | None:
    """Like :func:`last_producer`, but the first (innermost) module that hands out ``tensor``."""
    if tensor is None:
        return None
    for record in records:
        out = record.output
        if item is not None:
            out = out[item] if isinstance(out, (tuple, list)) and len(out) > item else None
        if out is tensor:
            return record.path
    return None


def last_per_resolution(body: nn.Module, sequence_path: str, resolution: int, min_reduction: int = 4) -> list[str]:
    """Stage taps of a plain ``nn.Sequential`` trunk: the last child at each spatial size.

    Children of ``sequence_path`` are probed with one image; children whose output is
    not an NCHW map, or that are still above ``1 / min_reduction`` of the input size
    (the stem), are skipped.
    """
    trunk = body.get_submodule(sequence_path)
    child_paths = [f"{sequence_path}.{name}" for name, _ in trunk.named_children()]
    with probing(body), recorded_outputs(body, child_paths) as records:
        images = probe_images(resolution)
        run_probe(f"{type(body).__name__}.{sequence_path}", resolution, lambda: trunk(images))
    last_by_size: dict[tuple[int, int], str] = {}
    for record in records:
        out = record.output
        if isinstance(out, Tensor) and out.ndim == 4 and out.shape[-1] * min_reduction <= resolution:
            last_by_size[tuple(out.shape[-2:])] = record.path  # dicts keep first-insertion order: shallow to deep
    return list(last_by_size.values())


def gap_linear_matches(features: Tensor, classifier: nn.Module, logits: Tensor) -> bool:
    """Whether ``logits == classifier(global_average_pool(features))``: the premise of CAM."""
    if not isinstance(classifier, nn.Linear) or features.ndim != 4 or features.shape[1] != classifier.in_features:
        return False
    pooled_logits = classifier(features.mean(dim=(2, 3)))
    return pooled_logits.shape == logits.shape and torch.allclose(pooled_logits, logits, rtol=1e-4, atol=1e-4)


def run_probe(describe: str, resolution: int, forward: Callable[[], Any]) -> Any:
    """Run a probe forward, turning a failure into a user error about the resolution."""
    try:
        return forward()
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise KdzooError(
            f"{describe} cannot run on {resolution}x{resolution} images ({exc}); set input_size to a "
            "resolution the model accepts"
        ) from exc
