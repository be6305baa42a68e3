"""Chance baselines for the attention-on-object IoU: masks of a given area per image that
know nothing of the image, to read ``attn_object_iou`` against.

- :func:`random_masks`: ``area`` pixels drawn uniformly without replacement;
- :func:`disc_masks`: the ``area`` pixels nearest the image centre (a rasterised centred
  disc whose area is exact).

Both rank the ``H * W`` pixels and keep those of rank below the area, so one ranking
serves every model's area on an image.
"""

from __future__ import annotations

import torch
from torch import Tensor

RANDOM_MASK_SEED = 0  # fixed: the random baseline is the same figure on every run


def centre_ranks(height: int, width: int) -> Tensor:
    """``(H * W,)`` int64 rank of every pixel (raster order) by distance of its centre
    from the image centre, nearest 0; equal distances rank in raster order.

    Distances are compared as ``(2y - (H-1))² + (2x - (W-1))²``, integers, so ties are
    exact and not left to float rounding.
    """
    rows = torch.arange(height).mul(2).sub(height - 1).square()
    cols = torch.arange(width).mul(2).sub(width - 1).square()
    distance = (rows[:, None] + cols[None, :]).flatten()
    order = torch.argsort(distance, stable=True)  # stable: ties keep raster order
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(len(order))
    return ranks


def random_ranks(count: int, height: int, width: int, first_index: int, seed: int = RANDOM_MASK_SEED) -> Tensor:
    """``(count, H * W)`` int64 uniformly random pixel ranks of images ``first_index`` to
    ``first_index + count - 1`` of a split.

    Each image draws from a CPU generator seeded with ``seed + its index in the split``,
    so an image's ranking depends only on its position: the same whatever the batch
    size or the number of processes, and on every run.
    """
    generator = torch.Generator()
    ranks = []
    for index in range(first_index, first_index + count):
        generator.manual_seed(seed + index)
        ranks.append(torch.randperm(height * width, generator=generator))  # a uniform permutation: ranks of pixels
    return torch.stack(ranks) if ranks else torch.empty(0, height * width, dtype=torch.long)


def masks_of_area(ranks: Tensor, areas: Tensor, height: int, width: int) -> Tensor:
    """``(B, H, W)`` bool masks: the pixels whose rank (``(H * W,)`` shared or
    ``(B, H * W)`` per image) is below the image's area (``(B,)``)."""
    ranks = ranks.to(areas.device)
    if ranks.ndim == 1:
        ranks = ranks.expand(len(areas), -1)
    return (ranks < areas.long()[:, None]).view(len(areas), height, width)


def disc_masks(areas: Tensor, height: int, width: int) -> Tensor:
    """``(B, H, W)`` centred discs of exactly ``areas`` pixels each."""
    return masks_of_area(centre_ranks(height, width), areas, height, width)


def random_masks(areas: Tensor, height: int, width: int, first_index: int, seed: int = RANDOM_MASK_SEED) -> Tensor:
    """``(B, H, W)`` uniformly random masks of exactly ``areas`` pixels each, for images
    ``first_index ...`` of the split (see :func:`random_ranks`)."""
    return masks_of_area(random_ranks(len(areas), height, width, first_index, seed), areas, height, width)
