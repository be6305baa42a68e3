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
    ``(N, H, W)`` bool object masks (ground truth for attention checks). Construction
    checks the images' dtype and layout and that each split has one label per image.

    - ``train_images``: uint8 ``(N, 3, H, W)`` training images (RGB, square: ``H == W``).
    - ``train_labels``: int64 ``(N,)`` class indices in ``[0, len(classes))``.
    - ``test_images``: uint8 ``(M, 3, H, W)`` test images, the same size as the training ones.
    - ``test_labels``: int64 ``(M,)`` class indices.
    - ``classes``: the class names, in label order (``len(classes)`` is the class count).
    - ``train_masks``: optional bool ``(N, H, W)`` object masks of the training images.
    - ``test_masks``: optional bool ``(M, H, W)`` object masks of the test images (what
      ``EvalBatch.masks`` is cut from on the ``test`` split).
    - ``name``: a display name (optional).
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
        """``len(classes)``."""
        return len(self.classes)

    @property
    def image_size(self) -> int:
        """The side ``W`` of the training images."""
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

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """The augmented batch: uint8 ``(B, 3, H, W)`` in, uint8 of the same shape out.

        ``images`` is on the CPU (augmentation runs in the main process, before the copy
        to the device); ``generator`` is a CPU ``torch.Generator``. Do not modify
        ``images`` in place: return a new tensor.
        """
        ...
