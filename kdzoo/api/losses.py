"""Losses: what a distillation method receives each step, and the class it subclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kdzoo.api.models import Network

@dataclass
class ModelOutputs:
    """One model's outputs for a batch: logits and the tapped features by module path.

    - ``logits``: ``(B, num_classes)``; may be bf16 under autocast (use ``.float()``).
    - ``features``: tap path -> the tapped module's output (the first tensor of a tuple
      output), for the paths ``Loss.taps`` asked for (across all losses of the run).
    """

    logits: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)

    def detached(self) -> ModelOutputs:
        """The same outputs cut from the autograd graph (what a peer student sees)."""
        return ModelOutputs(self.logits.detach(), {k: v.detach() for k, v in self.features.items()})


@dataclass
class DistillBatch:
    """Everything a loss sees for one training step.

    - ``student``: the student's outputs (with gradient).
    - ``teachers``: one ``ModelOutputs`` per teacher, in the spec's order (empty in a
      train run); detached, computed without gradient.
    - ``targets``: int64 ``(B,)`` labels.
    - ``images``: the student's float input ``(B, 3, H, W)`` in [0, 1] (augmented).
    - ``indices``: int64 ``(B,)`` dataset indices of the batch (memory-bank methods
      such as CRD).
    - ``epoch``: the current epoch, 0-based.
    - ``epochs``: the number of epochs of the run.
    - ``step``: the global step, 0-based.
    - ``steps``: the total number of steps of the run (schedules over training).
    - ``peers``: arm name -> the outputs of the *other* students trained in the same
      fused pass on this batch, detached (online methods such as deep mutual
      learning). Filled only for a loss with ``uses_peers``; empty otherwise.
    """

    student: ModelOutputs
    teachers: list[ModelOutputs]
    targets: Tensor
    images: Tensor
    indices: Tensor
    epoch: int = 0
    epochs: int = 1
    step: int = 0
    steps: int = 1
    peers: dict[str, ModelOutputs] = field(default_factory=dict)


#: Tap path -> the shape of its output on the sample batch (batch dimension included).
TapShapes = dict[str, torch.Size]


@dataclass
class SetupContext:
    """What a loss knows before training: tapped feature shapes (from one sample batch,
    batch dimension included), the networks themselves (read-only: e.g. a teacher's BN
    statistics or classifier) and the size of the run.

    - ``student_shapes``: the student's tapped shapes, for every path any loss of the
      run asked for (a superset of this loss's own taps).
    - ``teacher_shapes``: one ``TapShapes`` per teacher, in the order of ``teachers``.
    - ``student``: the student ``Network`` (on the run's device).
    - ``teachers``: the teacher networks, frozen, in the spec's order (empty in a train
      run).
    - ``num_classes``: the dataset's class count.
    - ``num_samples``: the training-set size (memory banks).
    - ``epochs``: the number of epochs of the run.
    - ``steps``: the total number of training steps of the run.
    """

    student_shapes: TapShapes
    teacher_shapes: list[TapShapes]
    student: Network
    teachers: list[Network]
    num_classes: int
    num_samples: int
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

    Connectors built in ``setup`` may be created on the CPU: the core moves the loss
    to the run's device after ``setup``.

    - ``params``: the validated instance of the component's params model (what the
      factory received; ``self.params``).
    - ``uses_teachers``: ``False`` for losses that only use the labels (CE): ``pair``
      is then called once with ``teacher=None``, and the loss also runs in train runs.
    - ``uses_peers``: ``True`` for online methods that learn from the other students of
      a fused pass (``batch.peers``). Every student of the pass then runs its forward
      before any loss is computed (memory: all the students' activations at once); such
      a loss needs a grid whose arms train in one pass, in one process.
    """

    #: False for losses that only use the labels (CE); such a loss runs without teachers.
    uses_teachers: ClassVar[bool] = True
    #: True for losses that read the other students of a fused pass (``batch.peers``).
    uses_peers: ClassVar[bool] = False

    def __init__(self, params: Any = None):
        super().__init__()
        self.params = params

    def taps(self, student: Network, teacher: Network | None) -> tuple[list[str], list[str]]:
        """Module paths to tap in the student and in one teacher."""
        return [], []

    def setup(self, context: SetupContext) -> None:
        """Called once before training, after one sample forward: build connectors here."""

    def forward(self, batch: DistillBatch) -> Tensor:
        """The loss of the batch: ``pair`` for each teacher, averaged over teachers.

        ``pair`` returns a scalar, or one value per sample (``(B,)``), which is averaged
        over the batch; any other shape is refused (a ``(B, C)`` result averaged
        silently would change what the loss weight means).
        """
        if not self.uses_teachers:
            return self._checked_pair(batch.student, None, batch, 0)
        if not batch.teachers:
            raise ValueError(f"{type(self).__name__} needs at least one teacher")
        losses = [self._checked_pair(batch.student, t, batch, i) for i, t in enumerate(batch.teachers)]
        return torch.stack(losses).mean()

    def _checked_pair(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: DistillBatch, index: int) -> Tensor:
        value = self.pair(student, teacher, batch, index)
        batch_size = batch.targets.shape[0]
        if not isinstance(value, Tensor):
            raise TypeError(f"{type(self).__name__}.pair returned {type(value).__name__}, not a tensor")
        if value.ndim == 0:
            return value
        if value.shape == (batch_size,):
            return value.mean()
        raise ValueError(
            f"{type(self).__name__}.pair returned shape {tuple(value.shape)}; it must return a scalar "
            f"or one value per sample ({batch_size},)"
        )

    def pair(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: DistillBatch, teacher_index: int) -> Tensor:
        """The loss against one teacher (``batch.teachers[teacher_index]``); ``teacher`` is
        ``None`` when ``uses_teachers`` is False. A scalar, or ``(B,)`` per-sample values."""
        raise NotImplementedError
