"""Models as kdzoo sees them: a body plus the module paths the core taps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class CamHead:
    """Where a CNN's class activation map comes from: the last feature map and the linear head."""

    features: str  # module path (relative to Network.body) whose output is (B, C, h, w)
    classifier: str  # module path of the nn.Linear(C, num_classes) head


class Network(nn.Module):
    """A model as kdzoo sees it.

    ``forward`` takes float images in [0, 1] at the dataset's resolution, resizes and
    normalises them for ``body`` and returns logits. Tap paths (``stages``,
    ``embedding``, ``cam``, ``attention``) are module paths inside ``body`` that the core
    hooks with forward hooks; the body itself is never modified.

    - ``stages``: outputs of the network's stages, shallow to deep (feature losses).
    - ``embedding``: the pooled penultimate features (flattened to ``(B, D)`` by users).
    - ``cam``: last feature map and linear head, for class activation maps.
    - ``attention``: (transformers) module paths whose forward output is the attention
      probabilities ``(B, heads, N, N)``, or a tuple whose second item is.
    - ``logits_of``: extracts logits from the body's output (HF returns an output object).
    """

    def __init__(
        self,
        body: nn.Module,
        *,
        num_classes: int,
        input_size: int | None = None,
        mean: Sequence[float] = CIFAR_MEAN,
        std: Sequence[float] = CIFAR_STD,
        stages: Sequence[str] = (),
        embedding: str | None = None,
        cam: CamHead | None = None,
        attention: Sequence[str] = (),
        logits_of: Callable[[Any], Tensor] | None = None,
        family: str = "cnn",
    ):
        super().__init__()
        self.body = body
        self.num_classes = num_classes
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.stages = list(stages)
        self.embedding = embedding
        self.cam = cam
        self.attention = list(attention)
        self.logits_of = logits_of
        self.family = family

    def preprocess(self, images: Tensor) -> Tensor:
        if self.input_size is not None and images.shape[-1] != self.input_size:
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def forward(self, images: Tensor) -> Tensor:
        out = self.body(self.preprocess(images))
        return self.logits_of(out) if self.logits_of is not None else out

    def submodule(self, path: str) -> nn.Module:
        """The module at ``path`` inside ``body`` ('' is the body itself)."""
        return self.body.get_submodule(path) if path else self.body
