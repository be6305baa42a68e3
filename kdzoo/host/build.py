"""Building components: one function per kind, each checking what the plugin returned,
and a guard that turns an exception in plugin code into a one-line ``ComponentError``.

Every place in kdzoo that builds a component goes through here (the run, the study,
``plugins check``), so the contract is enforced the same way everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdzoo.errors import ComponentError, KdzooError
from kdzoo.host.registry import Component, Registry

if TYPE_CHECKING:
    from kdzoo.api import ImageData, Loss, Metric, Network

DEBUG_ENV = "KDZOO_DEBUG"


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _where(epoch: int | None, step: int | None) -> str:
    parts = [f"epoch {epoch + 1}" if epoch is not None else "", f"step {step + 1}" if step is not None else ""]
    return "".join(f", {p}" for p in parts if p)


@contextmanager
def plugin_code(component: Component, phase: str, *, epoch: int | None = None, step: int | None = None) -> Iterator[None]:
    """Run plugin code; an exception becomes one line naming who failed where.

    kdzoo's own errors (bad input a plugin reported with ``KdzooError``) pass unchanged.
    """
    try:
        yield
    except KdzooError:
        raise
    except Exception as exc:
        if debug_enabled():
            raise
        raise ComponentError(
            f"{component.kind} '{component.name}' (plugin '{component.plugin}') failed in {phase}"
            f"{_where(epoch, step)}: {type(exc).__name__}: {exc}"
        ) from exc


def _build(registry: Registry, kind: str, name: str, params: Any, expected: type | Callable[[Any], bool], what: str, **context: Any) -> Any:
    component = registry.get(kind, name)
    with plugin_code(component, "its factory"):
        built = component.build(params, **context)
    ok = expected(built) if not isinstance(expected, type) else isinstance(built, expected)
    if not ok:
        raise KdzooError(
            f"{kind} '{name}' (plugin '{component.plugin}') returned {type(built).__name__}, not {what}"
        )
    return built


def build_model(registry: Registry, name: str, params: Any = None, *, num_classes: int, image_size: int) -> Network:
    from kdzoo.api import Network

    network = _build(registry, "model", name, params, Network, "a kdzoo.api.Network", num_classes=num_classes, image_size=image_size)
    if network.num_classes != num_classes:
        raise KdzooError(f"model '{name}' was asked for {num_classes} classes but built a Network with num_classes={network.num_classes}")
    return network


def build_dataset(registry: Registry, name: str, params: Any = None, *, seed: int, cache_dir: Path) -> ImageData:
    from kdzoo.api import ImageData

    return _build(registry, "dataset", name, params, ImageData, "a kdzoo.api.ImageData", seed=seed, cache_dir=cache_dir)


def build_augmentation(registry: Registry, name: str, params: Any = None) -> Callable[..., Any]:
    return _build(registry, "augmentation", name, params, callable, "a callable (images, generator) -> images")


def build_loss(registry: Registry, name: str, params: Any = None) -> Loss:
    from kdzoo.api import Loss

    return _build(registry, "loss", name, params, Loss, "a kdzoo.api.Loss")


def build_metric(registry: Registry, name: str, params: Any = None) -> Metric:
    from kdzoo.api import Metric

    return _build(registry, "metric", name, params, Metric, "a kdzoo.api.Metric")


BUILDERS: dict[str, Callable[..., Any]] = {
    "model": build_model,
    "dataset": build_dataset,
    "augmentation": build_augmentation,
    "loss": build_loss,
    "metric": build_metric,
}
