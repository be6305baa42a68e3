"""Models as kdzoo sees them: a body plus the module paths the core taps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # per-channel RGB mean of ImageNet: ``Network(mean=...)`` for ImageNet-pretrained bodies
IMAGENET_STD = (0.229, 0.224, 0.225)  # per-channel RGB std of ImageNet: ``Network(std=...)`` for ImageNet-pretrained bodies
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # per-channel RGB mean of CIFAR-10 (the default ``Network(mean=...)``)
CIFAR_STD = (0.2470, 0.2435, 0.2616)  # per-channel RGB std of CIFAR-10 (the default ``Network(std=...)``)


@dataclass(frozen=True)
class CamHead:
    """Where a CNN's class activation map comes from: the last feature map and the linear head.

    - ``features``: module path (relative to ``Network.body``) whose output is the last
      feature map ``(B, C, h, w)``.
    - ``classifier``: module path of the ``nn.Linear(C, num_classes)`` head applied to
      the pooled ``features``.
    """

    features: str
    classifier: str


class Network(nn.Module):
    """A model as kdzoo sees it.

    ``forward`` takes float images in [0, 1] at the dataset's resolution, resizes and
    normalises them for ``body`` and returns logits. Tap paths (``stages``,
    ``embedding``, ``cam``, ``attention``) are module paths inside ``body`` that the core
    hooks with forward hooks; the body itself is never modified. A tapped module's
    output must not be changed in place later in the forward (use ``nn.ReLU()``, not
    ``nn.ReLU(inplace=True)``, right after a tapped module), or the tap sees the change.

    - ``body``: the ``nn.Module`` itself; it receives normalised float images and
      returns logits (or an object ``logits_of`` reads them from). Its state dict is
      what a checkpoint saves (under ``BODY_PREFIX``).
    - ``num_classes``: the number of classes the head predicts; must equal the
      ``num_classes`` the factory was called with (the core refuses a mismatch).
    - ``input_size``: resize (bilinear) images to this square size before ``body``;
      ``None`` feeds the dataset's resolution unchanged.
    - ``mean``: per-channel RGB mean subtracted after resizing (``CIFAR_MEAN`` by
      default; ``IMAGENET_MEAN`` for ImageNet-pretrained bodies).
    - ``std``: per-channel RGB standard deviation divided by after subtracting ``mean``.
    - ``stages``: outputs of the network's stages, shallow to deep (feature losses).
    - ``pre_activation_stages``: the same stages' outputs before their final activation
      (e.g. a residual block's sum before its ReLU), one per stage; AB and OFD tap these,
      as their references do. Empty: those losses tap ``stages``.
    - ``pre_activation_norms``: the BatchNorm2d that feeds each pre-activation output
      (a residual block's last BN), one per stage; OFD derives its margin from it.
    - ``embedding``: the pooled penultimate features (flattened to ``(B, D)`` by users).
    - ``cam``: last feature map and linear head, for class activation maps.
    - ``attention``: (transformers) module paths whose forward output is the attention
      probabilities ``(B, heads, N, N)``, or a tuple whose second item is.
    - ``logits_of``: extracts logits from the body's output (HF returns an output object).
    - ``family``: ``"cnn"`` (gets channels_last memory format by default, see the spec's
      ``channels_last``) or any other name, e.g. ``"vit"`` (does not).
    - ``weights_source``: where the initial weights came from, recorded in the run's
      manifest so the run can be reproduced: e.g. ``{"hub": "huggingface", "id":
      "timm/resnet50.a1_in1k", "revision": "<commit hash>"}`` or ``{"file": path,
      "sha256": ...}``; ``None`` for random initialisation. Set by the factory.
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
        pre_activation_stages: Sequence[str] = (),
        pre_activation_norms: Sequence[str] = (),
        embedding: str | None = None,
        cam: CamHead | None = None,
        attention: Sequence[str] = (),
        logits_of: Callable[[Any], Tensor] | None = None,
        family: str = "cnn",
        weights_source: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.body = body
        self.num_classes = num_classes
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.stages = list(stages)
        self.pre_activation_stages = list(pre_activation_stages)
        self.pre_activation_norms = list(pre_activation_norms)
        for name, paths in (("pre_activation_stages", self.pre_activation_stages), ("pre_activation_norms", self.pre_activation_norms)):
            if paths and len(paths) != len(self.stages):
                raise ValueError(f"Network: {name} has {len(paths)} paths for {len(self.stages)} stages (one per stage)")
        self.embedding = embedding
        self.cam = cam
        self.attention = list(attention)
        self.logits_of = logits_of
        self.family = family
        self.weights_source = weights_source

    def preprocess(self, images: Tensor) -> Tensor:
        """Resize ``images`` (float, [0, 1]) to ``input_size`` when set, then normalise with ``mean``/``std``."""
        if self.input_size is not None and images.shape[-1] != self.input_size:
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of float images in [0, 1]: ``body(preprocess(images))``, through ``logits_of`` when set."""
        out = self.body(self.preprocess(images))
        return self.logits_of(out) if self.logits_of is not None else out

    def submodule(self, path: str) -> nn.Module:
        """The module at ``path`` inside ``body`` ('' is the body itself)."""
        return self.body.get_submodule(path) if path else self.body
