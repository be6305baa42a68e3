"""Shared fixtures: build metrics through the plugin host, make evaluation batches, stream them."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import pytest
import torch

from kdzoo.api import EvalBatch, Metric


@pytest.fixture(scope="session")
def metrics_host():
    """A plugin host that loads only this plugin (as the brief's allow-list does)."""
    from kdzoo.host.loading import ALLOW_LIST_ENV, load_plugins

    before = os.environ.get(ALLOW_LIST_ENV)
    os.environ[ALLOW_LIST_ENV] = "kdzoo-metrics"
    try:
        host = load_plugins()
    finally:
        if before is None:
            del os.environ[ALLOW_LIST_ENV]
        else:
            os.environ[ALLOW_LIST_ENV] = before
    assert "kdzoo-metrics" in host.plugins, host.registry.failures
    return host


@pytest.fixture
def build(metrics_host) -> Callable[..., Metric]:
    def _build(name: str, **params) -> Metric:
        return metrics_host.registry.build("metric", name, params)

    return _build


def distill_batch(
    logits: dict[str, torch.Tensor],
    targets: torch.Tensor,
    *,
    teachers: Sequence[str] = ("t1", "t2"),
    student: str | None = "student",
    **extra,
) -> EvalBatch:
    """An EvalBatch as a distill run's evaluation would hand it over."""
    size = len(targets)
    extra.setdefault("images", torch.zeros(size, 3, 2, 2))
    return EvalBatch(
        logits=logits,
        features=extra.pop("features", {}),
        targets=targets,
        networks=extra.pop("networks", {}),
        teachers=tuple(teachers),
        student=student,
        **extra,
    )


def stream(metric: Metric, batch: EvalBatch, batch_size: int) -> dict:
    """reset / update per slice of ``batch`` / compute, as the engine drives a metric."""
    metric.reset()
    size = len(batch.targets)
    for start in range(0, size, batch_size):
        part = slice(start, start + batch_size)
        metric.update(
            EvalBatch(
                logits={role: value[part] for role, value in batch.logits.items()},
                features={role: {p: v[part] for p, v in taps.items()} for role, taps in batch.features.items()},
                targets=batch.targets[part],
                images=batch.images[part],
                networks=batch.networks,
                masks=None if batch.masks is None else batch.masks[part],
                teachers=batch.teachers,
                student=batch.student,
            )
        )
    return metric.compute()


@pytest.fixture
def make_batch():
    return distill_batch


@pytest.fixture
def run_metric():
    return stream
