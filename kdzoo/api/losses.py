"""Losses: what a distillation method receives each step, and the class it subclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kdzoo.api.models import Network

@dataclass
class ModelOutputs:
    """One model's outputs for a batch: logits and the tapped features by module path."""

    logits: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class DistillBatch:
    """Everything a loss sees for one training step."""

    student: ModelOutputs
    teachers: list[ModelOutputs]
    targets: Tensor
    images: Tensor  # the student's float input in [0, 1]
    indices: Tensor  # dataset indices of the batch (memory-bank methods such as CRD)
    epoch: int = 0  # 0-based
    epochs: int = 1
    step: int = 0  # global step, 0-based
    steps: int = 1  # total steps of the run


TapShapes = dict[str, torch.Size]


@dataclass
class SetupContext:
    """What a loss knows before training: tapped feature shapes (from one sample batch,
    batch dimension included), the networks themselves (read-only: e.g. a teacher's BN
    statistics or classifier) and the size of the run."""

    student_shapes: TapShapes
    teacher_shapes: list[TapShapes]
    student: Network
    teachers: list[Network]
    num_classes: int
    num_samples: int  # training-set size (memory banks)
    epochs: int = 1
    steps: int = 1


class Loss(nn.Module):
    """A training objective; distillation losses compare the student with each teacher.

    Override ``pair`` (one teacher) and get the multi-teacher mean for free, or override
    ``forward`` when the method defines its own multi-teacher rule. Override ``taps`` to
    ask for features and ``setup`` to build connectors once their shapes are known;
    every parameter of the loss (connectors; memory banks are buffers) is trained with
    the student and saved with its checkpoint.

    Teacher outputs arrive detached; detach them anyway (``kdzoo plugins check`` feeds
    teachers that require grad and fails a loss whose gradient reaches them). Logits
    may arrive in bf16 under autocast: compute
    anything divided by a temperature in fp32 (``logits.float()``).
    """

    #: False for losses that only use the labels (CE); such a loss runs without teachers.
    uses_teachers: ClassVar[bool] = True

    def __init__(self, params: Any = None):
        super().__init__()
        self.params = params

    def taps(self, student: Network, teacher: Network | None) -> tuple[list[str], list[str]]:
        """Module paths to tap in the student and in one teacher."""
        return [], []

    def setup(self, context: SetupContext) -> None:
        """Called once before training, after one sample forward: build connectors here."""

    def forward(self, batch: DistillBatch) -> Tensor:
        if not self.uses_teachers:
            return self.pair(batch.student, None, batch, 0)
        if not batch.teachers:
            raise ValueError(f"{type(self).__name__} needs at least one teacher")
        losses = [self.pair(batch.student, t, batch, i) for i, t in enumerate(batch.teachers)]
        return torch.stack(losses).mean()

    def pair(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: DistillBatch, teacher_index: int) -> Tensor:
        raise NotImplementedError
