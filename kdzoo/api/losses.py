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


@dataclass(frozen=True)
class ViewRequest:
    """A further view of every training batch that a loss asks for (``Loss.views``): the
    batch's images augmented again, independently, by a registered augmentation policy.

    The core draws the view once per batch from a generator of its own (seeded from the
    run's seed, the epoch and the policy), so a view costs nothing to the losses that do
    not ask for it, and fused arms and resumed runs see the same views as a run alone.
    Two losses that ask for the same policy with the same params (written the same) see
    the same view; the teachers and the student each run one forward on it.

    - ``augmentation``: the name of a registered augmentation policy (``kdzoo plugins``).
    - ``params``: its params, as a spec would give them (validated when the run starts).
    """

    augmentation: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ViewOutputs:
    """The models' outputs on one further view of the batch (``DistillBatch.views``).

    - ``images``: the view's float input ``(B, 3, H, W)`` in [0, 1], the same images as
      ``DistillBatch.images`` (same targets and indices) augmented by the view's policy.
    - ``student``: the student's outputs on the view, with gradient (a second forward of
      the student in train mode: its BatchNorm statistics see both views, as in the
      reference codes of two-view methods).
    - ``teachers``: one ``ModelOutputs`` per teacher on the view, detached (the
      teachers see the view itself, also with ``teacher_views: own``).
    """

    images: Tensor
    student: ModelOutputs
    teachers: list[ModelOutputs]


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
      In a run with ``stages:``, ``epoch``, ``epochs``, ``step`` and ``steps`` count
      within the current stage (a warm-up starts again with the distillation stage, as
      in the references' separate training loops).
    - ``peers``: arm name -> the outputs of the *other* students trained in the same
      fused pass on this batch, detached (online methods such as deep mutual
      learning). Filled only for a loss with ``uses_peers``; empty otherwise.
    - ``views``: further augmented views of the same images, by the names the loss's
      ``views()`` gave them: each a :class:`ViewOutputs` (the student's outputs with
      gradient, the teachers' detached). Filled only with the views this loss asked
      for; empty otherwise.
    - ``stage``: the name of the current stage of a run with ``stages:`` (one of the
      names in the loss's ``stages``, for a loss that declares them); ``None`` in a run
      without stages.
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
    views: dict[str, ViewOutputs] = field(default_factory=dict)
    stage: str | None = None


@dataclass
class StudentHead:
    """The head a loss supplies for the student to predict through (``Loss.student_head``):
    the student's logits become ``module(output of the student's module tap)`` in
    evaluation, in its checkpoint and wherever it is loaded (``kdzoo.load_model``,
    ``kdzoo export``, a teacher from its checkpoint). SimKD's projector and reused teacher
    classifier are one.

    - ``tap``: the student module path (inside its body) whose output the head reads.
    - ``module``: ``module(feature) -> logits (B, num_classes)``, made of the loss's own
      modules (their parameters and buffers are the loss's: trained with it, in its
      state). The core saves its state dict under ``HEAD_PREFIX`` in the student's
      checkpoint, and evaluates it in eval mode.
    - ``config``: JSON-able values that ``Loss.build_student_head`` needs to rebuild the
      module untrained (shapes, sizes), recorded in the checkpoint's manifest.
    """

    tap: str
    module: nn.Module
    config: dict[str, Any] = field(default_factory=dict)


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
    - ``is_task_loss``: ``True`` for the task loss itself, the cross-entropy with the
      labels (``ce``). Optimizers that treat the task and the distillation gradients
      apart (``optimizer: {name: dot}``) put such terms on the task side and every other
      term on the distillation side; it changes nothing otherwise.

    Override ``views`` for a method that trains on further augmented views of each
    batch (e.g. a weak and a strong view): the core then runs the teachers and the
    student on each view too, and hands the outputs in as ``batch.views``.

    - ``stages``: the stage names a loss that pre-trains or initialises understands
      (e.g. FT's ``paraphraser`` and ``transfer``); it reads the current one from
      ``batch.stage``. In a run with ``stages:`` such a loss takes part only in stages of
      these names (elsewhere its weight must be 0; other names are refused at
      validation). Empty (the default): the loss behaves the same in every stage.

    Override ``student_head`` for a method whose student predicts through modules of the
    loss (SimKD: its projector and the teacher's classifier), and
    ``build_student_head`` to rebuild them from a checkpoint.
    """

    #: False for losses that only use the labels (CE); such a loss runs without teachers.
    uses_teachers: ClassVar[bool] = True
    #: True for losses that read the other students of a fused pass (``batch.peers``).
    uses_peers: ClassVar[bool] = False
    #: True for the task loss (the labels' cross-entropy); DOT gives its gradient the task momentum.
    is_task_loss: ClassVar[bool] = False
    #: Stage names this loss understands (``batch.stage``); empty: the same in every stage.
    stages: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Any = None):
        super().__init__()
        self.params = params

    def taps(self, student: Network, teacher: Network | None) -> tuple[list[str], list[str]]:
        """Module paths to tap in the student and in one teacher."""
        return [], []

    def views(self) -> dict[str, ViewRequest]:
        """Further augmented views of each training batch this loss reads, by the name
        it reads each under in ``batch.views``; asked once, when the run is built (read
        ``self.params`` here). By default no view: the loss sees the batch alone."""
        return {}

    def setup(self, context: SetupContext) -> None:
        """Called once before training, after one sample forward: build connectors here."""

    def student_head(self) -> StudentHead | None:
        """The head the student predicts through, asked after ``setup`` (read
        ``self.params`` to make it optional); None by default: the student's own logits."""
        return None

    def build_student_head(self, config: dict[str, Any]) -> nn.Module:
        """A head like ``student_head().module``, untrained, from its ``config``: the core
        loads the checkpoint's weights into it (a loss with a ``student_head`` must
        override this)."""
        raise NotImplementedError(f"{type(self).__name__} supplies a student head but cannot rebuild it (build_student_head)")

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
