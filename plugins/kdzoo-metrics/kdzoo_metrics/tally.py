"""Named running sums for streaming metrics."""

from __future__ import annotations

import torch
from torch import Tensor


class Tally:
    """Running sums by name, kept on the data's device until ``compute``.

    Integer values are summed as int64 (exact counts), floating ones as float64 (a
    float32 sum over a large split loses digits).
    """

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}

    def add(self, name: str, value: Tensor) -> None:
        dtype = torch.float64 if value.is_floating_point() else torch.int64
        value = value.detach().to(dtype)
        if name in self.sums:
            self.sums[name] += value
        else:
            self.sums[name] = value.clone()

    def __contains__(self, name: str) -> bool:
        return name in self.sums

    def __getitem__(self, name: str) -> Tensor:
        return self.sums[name]

    def names(self) -> list[str]:
        return list(self.sums)

    def reduce(self, reducer) -> None:
        """Sum over the ranks of a run on several processes (``kdzoo.api.Metric.reduce``):
        a name a rank never added counts as zero there."""
        self.sums = reducer.sum(self.sums)
