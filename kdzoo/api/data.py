"""Datasets and augmentations: the uint8 image tensors every data plugin produces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

@dataclass
class ImageData:
    """A decoded image classification dataset held as uint8 tensors.

    Images are ``(N, 3, H, W)`` uint8, labels ``(N,)`` int64. ``*_masks`` are optional
    ``(N, H, W)`` bool object masks (ground truth for attention checks).
    """

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: list[str]
    train_masks: Tensor | None = None
    test_masks: Tensor | None = None
    name: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[-1])

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"{split}_images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
            if labels.shape != (images.shape[0],):
                raise ValueError(f"{split}_labels must be ({images.shape[0]},), got {tuple(labels.shape)}")


class Augmentation(Protocol):
    """Maps a uint8 ``(B, 3, H, W)`` batch to an augmented uint8 batch of the same shape.

    Randomness is per image and drawn only from ``generator`` (so a run is reproducible
    and resumable from its seed and epoch).
    """

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor: ...
