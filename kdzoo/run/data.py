"""The data path: decoded uint8 tensors in memory, augmented per batch in the main process.

On a few CPU cores, DataLoader workers compete with training for the same cores
(PERF-NOTES: an ImageFolder + PIL pipeline halves KD throughput), so kdzoo decodes a
dataset once into uint8 tensors and augments whole uint8 batches with vectorised code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from kdzoo.api import ImageData
from kdzoo.host.build import build_dataset
from kdzoo.host.registry import Registry
from kdzoo.spec import DataSpec

CACHE_ENV = "KDZOO_CACHE"


def cache_dir() -> Path:
    """Where datasets keep decoded tensors and unpacked archives (never inside the repo)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "kdzoo")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _subset(images: Tensor, labels: Tensor, masks: Tensor | None, limit: int | None, seed: int):
    if limit is None or limit >= len(labels):
        return images, labels, masks
    keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return images[keep], labels[keep], None if masks is None else masks[keep]


_LOADED: dict[str, ImageData] = {}  # the same dataset spec is decoded once per process (grids)


def load_data(spec: DataSpec, registry: Registry, seed: int = 0) -> ImageData:
    """Build the dataset of a spec and apply its fixed train/test subsets.

    Subsets depend on the data spec only (not on the run's seed), so every arm of a
    study sees the same images.
    """
    key = spec.model_dump_json()
    if key in _LOADED:
        return _LOADED[key]
    from kdzoo.run import distributed

    if not distributed.is_main():
        distributed.barrier()  # rank 0 decodes (and caches) first: no two ranks write one cache file
    data = _load(spec, registry, seed)
    if distributed.is_main():
        distributed.barrier()
    _LOADED[key] = data
    return data


def _load(spec: DataSpec, registry: Registry, seed: int) -> ImageData:
    data = build_dataset(registry, spec.name, spec.params, seed=seed, cache_dir=cache_dir())
    train = _subset(data.train_images, data.train_labels, data.train_masks, spec.train_limit, 1)
    test = _subset(data.test_images, data.test_labels, data.test_masks, spec.test_limit, 2)
    return ImageData(*train[:2], *test[:2], classes=data.classes, train_masks=train[2], test_masks=test[2], name=data.name or spec.name)


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None, drop_last: bool) -> Iterator[Tensor]:
    """Index batches over ``n`` samples: shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def rank_shard(index: Tensor, rank: int, world_size: int) -> Tensor:
    """This rank's contiguous slice of a global batch (the whole batch in one process)."""
    if world_size == 1:
        return index
    return index.tensor_split(world_size)[rank]


def in_layout(images: Tensor, channels_last: bool) -> Tensor:
    """The same images in the memory layout a network runs fastest with (no copy if already so)."""
    return images.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def to_float(images: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    """uint8 (B,3,H,W) -> float in [0, 1] on the device (converted after the copy: 4x less traffic)."""
    return in_layout(images.to(device, non_blocking=True).float().div_(255), channels_last)
