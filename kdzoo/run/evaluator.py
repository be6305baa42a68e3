"""Evaluation: every role over a split, streamed through the metrics.

Several processes: evaluation batch ``i`` goes whole to rank ``i % world_size`` (so
every per-batch quantity is what it is in one process), then each metric's
``reduce`` combines the ranks' accumulators and every rank computes the same figures
(the contract is in :class:`kdzoo.api.Metric`). An augmented split (``test_aug``)
draws every batch's augmentation on every rank, in order, from the one generator:
batch ``i`` gets the images a single process would give it. And the study's
generalisation gap, from a run's evaluation records.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from kdzoo.api import EvalBatch, Metric, Network, Reducer
from kdzoo.api.keys import metric_key
from kdzoo.api.taps import tapped
from kdzoo.errors import ComponentError
from kdzoo.host.build import plugin_code
from kdzoo.host.registry import Component
from kdzoo.run import distributed
from kdzoo.run.data import batch_indices, in_layout, to_float
from kdzoo.run.runtime import Runtime

EVAL_BATCH = 512


def forward_with_taps(network: Network, images: Tensor, paths: list[str], raw: bool = False) -> tuple[Tensor, dict[str, Any]]:
    with tapped(network, paths, raw=raw) as features:
        logits = network(images)
    return logits, dict(features)


def as_figure(value: Any) -> Any:
    """A 0-d tensor or numpy number as a Python float (so it reaches metrics.jsonl and the
    manifest); other values (lists of reliability bins, overlays) as they are."""
    if isinstance(value, Tensor) and value.numel() == 1:
        return float(value.item())
    if hasattr(value, "item") and hasattr(value, "dtype") and getattr(value, "shape", None) == ():
        return float(value.item())
    return value


class Evaluator:
    """Runs every role over a split and feeds the metrics (streaming)."""

    def __init__(self, runtime: Runtime, networks: dict[str, Network], channels_last: dict[str, bool], teachers: tuple[str, ...], student: str,
                 frozen_logits: dict[tuple[str, str], list[Tensor]] | None = None):
        self.runtime = runtime
        self.networks = networks
        self.channels_last = channels_last
        self.teachers = teachers
        self.student = student
        # (split, teacher) -> logits of this rank's batches, in order: teachers never change.
        # Arms of a fused pass that evaluate the same images share one (see kdzoo.run.trainer).
        self._frozen_logits = {} if frozen_logits is None else frozen_logits

    def run(self, split: str, images: Tensor, labels: Tensor, masks: Tensor | None, metrics: list[tuple[Component, Metric]], augmentation=None, aug_seed: int = 0, epoch: int | None = None) -> dict[str, Any]:
        taps: dict[str, list[str]] = {}
        for component, metric in metrics:
            with plugin_code(component, "reset and taps", epoch=epoch):
                metric.reset()
                requested = metric.taps(self.networks)
            for role, paths in requested.items():
                taps.setdefault(role, []).extend(paths)
        generator = torch.Generator().manual_seed(aug_seed)
        cached = {role: self._frozen_logits.get((split, role)) for role in self.teachers if not taps.get(role)}
        fresh: dict[str, list[Tensor]] = {role: [] for role, logits in cached.items() if logits is None}
        rank, world_size = distributed.rank(), distributed.world_size()
        mine = -1  # this rank's batches so far
        with torch.no_grad(), self.runtime.autocast():
            for number, index in enumerate(batch_indices(len(labels), EVAL_BATCH, None, drop_last=False)):
                batch_images = images[index]
                if augmentation is not None:  # on every rank: the generator must reach batch i as in one process
                    batch_images = augmentation(batch_images, generator)
                if number % world_size != rank:
                    continue
                mine += 1
                logits: dict[str, Tensor] = {}
                features: dict[str, dict[str, Any]] = {}
                x = to_float(batch_images, self.runtime.device, channels_last=False)  # once per batch
                for role, network in self.networks.items():
                    if cached.get(role) is not None:
                        logits[role] = cached[role][mine].to(self.runtime.device)
                        continue
                    logits[role], features[role] = forward_with_taps(
                        network, in_layout(x, self.channels_last[role]), taps.get(role, []), raw=True
                    )
                    logits[role] = logits[role].float()
                    if role in fresh:
                        fresh[role].append(logits[role].cpu())
                batch = EvalBatch(
                    logits=logits,
                    features=features,
                    targets=labels[index].to(self.runtime.device),
                    images=x,
                    networks=self.networks,
                    masks=None if masks is None else masks[index].to(self.runtime.device),
                    teachers=self.teachers,
                    student=self.student,
                    offset=int(index[0]),
                )
                for component, metric in metrics:
                    with plugin_code(component, f"update on the {split} split", epoch=epoch):
                        metric.update(batch)
        for role, chunks in fresh.items():
            self._frozen_logits[(split, role)] = chunks
        if distributed.active():
            reducer = Reducer()
            for component, metric in metrics:  # every rank, in the same order: these are collectives
                with plugin_code(component, f"reduce on the {split} split", epoch=epoch):
                    metric.reduce(reducer)
        results: dict[str, Any] = {}
        owners: dict[str, str] = {}
        for component, metric in metrics:
            with plugin_code(component, f"compute on the {split} split", epoch=epoch):
                figures = metric.compute()
            if not isinstance(figures, dict):
                raise ComponentError(f"metric '{component.name}' (plugin '{component.plugin}') returned {type(figures).__name__} from compute, not a dict of figures")
            for key, value in figures.items():
                if key in owners:  # two metrics writing one key: the second would silently win
                    raise ComponentError(
                        f"metrics '{owners[key]}' and '{component.name}' both report '{key}'; give them different "
                        "params or drop one from the spec"
                    )
                owners[key] = component.name
                results[key] = as_figure(value)
        return results


def generalisation_gap(records: list[dict[str, Any]], role: str) -> dict[str, float]:
    """The study's gap: train top-1 at the best-test epoch minus the best test top-1; and at the last epoch."""
    train_key, test_key = metric_key("train", "top1", role), metric_key("test", "top1", role)
    scored = [r for r in records if test_key in r]
    out: dict[str, float] = {}
    if not scored:
        return out
    best = max(scored, key=lambda r: r[test_key])
    out["best_test_top1"] = best[test_key]
    out["best_epoch"] = best["epoch"]
    if train_key in best:
        out["gap_at_best"] = best[train_key] - best[test_key]
    last = scored[-1]
    if train_key in last:
        out["gap_final"] = last[train_key] - last[test_key]
    return out
