"""The data path: decoded uint8 tensors in memory, augmented per batch in the main process.

On a few CPU cores, DataLoader workers compete with training for the same cores
(PERF-NOTES: an ImageFolder + PIL pipeline halves KD throughput), so kdzoo decodes a
dataset once into uint8 tensors and augments whole uint8 batches with vectorised code.

On CUDA the training images go where :func:`placement` says: on the GPU (indexed and
augmented there) or in host memory, each batch staged in pinned memory and copied
without blocking (:class:`TrainBatches`). Nothing in a step waits for the GPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from kdzoo.errors import StorageError
from kdzoo.api import ImageData
from kdzoo.host.build import build_dataset
from kdzoo.host.registry import Registry
from kdzoo.spec import DataSpec

CACHE_ENV = "KDZOO_CACHE"


def cache_dir() -> Path:
    """Where datasets keep decoded tensors and unpacked archives (never inside the repo)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "kdzoo")
    path = Path(root)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"{CACHE_ENV}: cannot create the dataset cache {path} ({exc.strerror or exc}); set {CACHE_ENV} to a writable folder") from None
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


class Layouts:
    """One float batch in each memory layout asked for, each converted once (the arms and
    teachers of a pass share it)."""

    def __init__(self, images: Tensor, channels_last: bool):
        self._by_layout = {channels_last: images}

    def __call__(self, channels_last: bool) -> Tensor:
        if channels_last not in self._by_layout:
            self._by_layout[channels_last] = in_layout(self._by_layout[not channels_last], channels_last)
        return self._by_layout[channels_last]


def to_float(images: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    """uint8 (B,3,H,W) -> float in [0, 1] on the device (converted after the copy: 4x less traffic)."""
    return in_layout(images.to(device, non_blocking=True).float().div_(255), channels_last)


# --------------------------------------------------------------------------- where the train images live
DEVICE_SHARE = 0.25  # the uint8 train images move to the GPU when they take under this share of its free memory
Placement = Literal["host", "device", "pinned"]


def placement(device: torch.device, nbytes: int, free_bytes: int | None = None) -> Placement:
    """Where ``nbytes`` of uint8 training images live while a run on ``device`` trains.

    - ``"host"``: any device but CUDA (the CPU). Today's path, bit for bit: each batch is
      gathered and augmented in host memory, then converted to float.
    - ``"device"``: CUDA, and the images take under ``DEVICE_SHARE`` (a quarter) of the free
      device memory. They are copied to the GPU once, as uint8, and every batch is
      indexed and augmented there, with a ``torch.Generator(device=...)``.
    - ``"pinned"``: CUDA, and they do not fit. They stay in host memory; each batch is
      gathered straight into a pinned buffer, copied with ``non_blocking=True`` and
      augmented on the GPU. (The batch is what must be pinned for the copy not to block:
      rows gathered from a pinned dataset are pageable again, and pinning tens of GB of
      host memory can fail.)

    ``free_bytes`` is the free device memory; ``None`` reads it (``torch.cuda.mem_get_info``).
    Tests inject it.
    """
    if device.type != "cuda":
        return "host"
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    return "device" if nbytes < DEVICE_SHARE * free_bytes else "pinned"


class TrainBatches:
    """One epoch's batches of a rank: ``(uint8 images, targets, indices)``.

    On the host path the images stay on the host (augmented there, as always) and the
    targets and indices are moved per batch, as before. Otherwise the labels are on the
    device, the epoch's order is copied there once (through pinned memory, without
    blocking), and the images are rows of the device copy or a pinned host batch copied
    without blocking: no step waits for the GPU. The batches are the host path's in
    every case (tests run the other placements on the CPU).
    """

    def __init__(self, images: Tensor, labels: Tensor, device: torch.device, free_bytes: int | None = None):
        self.device = device
        self.where = placement(device, images.numel() * images.element_size(), free_bytes)
        self.images = images.to(device) if self.where == "device" else images
        self.labels = labels if self.where == "host" else labels.to(device)

    def generator(self, seed: int) -> torch.Generator:
        """The augmentation generator: on the device the images are augmented on."""
        return torch.Generator(device="cpu" if self.where == "host" else self.device).manual_seed(seed)

    def _pinned(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=self.device.type == "cuda")

    def _send(self, host: Tensor) -> Tensor:
        """A pinned host tensor on the device, without blocking (the caching host allocator
        keeps the pinned block until the copy is done)."""
        return host.to(self.device, non_blocking=True)

    def epoch(self, batch_size: int, order: torch.Generator, rank: int = 0, world_size: int = 1) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        n = len(self.labels)
        drop_last = n >= batch_size
        if self.where == "host":
            for global_index in batch_indices(n, batch_size, order, drop_last):
                index = rank_shard(global_index, rank, world_size)
                yield self.images.index_select(0, index), self.labels[index].to(self.device), index.to(self.device)
            return
        host_order = torch.randperm(n, generator=order)  # the draw batch_indices makes
        device_order = self._send(self._pinned(host_order.shape, host_order.dtype).copy_(host_order))
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            index = rank_shard(device_order[start : start + batch_size], rank, world_size)
            if self.where == "device":
                batch = self.images.index_select(0, index)
            else:  # gathered on the host straight into a pinned batch
                host_index = rank_shard(host_order[start : start + batch_size], rank, world_size)
                staged = self._pinned((len(host_index), *self.images.shape[1:]), self.images.dtype)
                batch = self._send(torch.index_select(self.images, 0, host_index, out=staged))
            yield batch, self.labels.index_select(0, index), index
