"""The stages of a run as the training loop follows them (``stages:`` of a distill spec; the
rules are in :mod:`kdzoo.spec.stages`).

A run without ``stages:`` is one stage that spans it, named None, with the spec's weights,
optimizer and schedule: its steps are what they always were. In a run with stages, stage
``k`` takes the epochs after stage ``k - 1``'s; each starts a fresh optimizer over what it
trains (the student and the losses' modules, or the losses' alone with ``student:
frozen``), its schedule runs over its own steps, its terms of weight 0 are not computed,
and the losses see the stage's name and its own epoch and step counts in ``DistillBatch``.
The state after an epoch records the stage its optimizer belongs to, and the epochs done in
that stage: a run resumed in a stage, or at a boundary, trains on as it would have
uninterrupted (at a boundary the next stage starts its fresh optimizer either way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from kdzoo.errors import KdzooError
from kdzoo.run.dot import dot_task_terms
from kdzoo.run.schedule import lr_factor, make_optimizer
from kdzoo.spec import AnySpec, DistillSpec, OptimizerSpec, ScheduleSpec
from kdzoo.spec.stages import stage_weights


@dataclass(frozen=True)
class Stage:
    """One stage: where it starts (``first_epoch``, 0-based), how long it lasts, each term's
    weight (the spec's losses' order), its optimizer and schedule (``make_optimizer`` and
    ``lr_factor`` read these two fields, as they read a spec's), and whether the student trains."""

    index: int
    name: str | None  # None: a run without stages
    first_epoch: int
    epochs: int
    weights: tuple[float, ...]
    optimizer: OptimizerSpec
    schedule: ScheduleSpec
    student_frozen: bool = False

    @property
    def active(self) -> list[bool] | None:
        """Which terms the stage computes; None (all, as always) in a run without stages."""
        return None if self.name is None else [weight > 0 for weight in self.weights]

    def holds(self, epoch: int) -> bool:
        return self.first_epoch <= epoch < self.first_epoch + self.epochs

    def meta(self, epochs_done: int) -> dict[str, Any] | None:
        """What the state after ``epochs_done`` epochs of the run records about this stage
        (None in a run without stages: its state files stay what they were)."""
        if self.name is None:
            return None
        return {"index": self.index, "name": self.name, "epoch": epochs_done - self.first_epoch}

    def at_step(self, epoch: int, step: int, steps_per_epoch: int) -> tuple[float, tuple[int, int, int, int], dict[str, Any]]:
        """For the run's ``step`` in ``epoch``: the lr (the stage's schedule over its own
        steps), ``(epoch, epochs, step, steps)`` counted within the stage, and the step's
        stage arguments (its name and the terms it computes; none without stages)."""
        first, steps = self.first_epoch * steps_per_epoch, self.epochs * steps_per_epoch
        lr = self.optimizer.lr * lr_factor(self, step - first, steps, steps_per_epoch)
        extra = {} if self.name is None else {"stage": self.name, "active": self.active}
        return lr, (epoch - self.first_epoch, self.epochs, step - first, steps), extra

    def computed_figures(self, means: dict[str, float], terms: list) -> dict[str, float]:
        """An epoch's loss figures without those of the terms the stage did not compute."""
        if self.active is None:
            return means
        computed = {term.name for term, on in zip(terms, self.active) if on}
        return {k: v for k, v in means.items() if not k.startswith("loss/") or k[len("loss/"):] in computed}


def plan_stages(spec: AnySpec) -> list[Stage]:
    """The stages of ``spec``, in order (one spanning the run when it declares none)."""
    declared = spec.stages if isinstance(spec, DistillSpec) else []
    if not declared:
        return [Stage(0, None, 0, spec.epochs, tuple(term.weight for term in spec.losses), spec.optimizer, spec.schedule)]
    stages, first = [], 0
    for index, stage in enumerate(declared):
        stages.append(Stage(index, stage.name, first, stage.epochs, tuple(stage_weights(stage, spec.losses)),
                            stage.optimizer or spec.optimizer, stage.schedule or spec.schedule, stage.student == "frozen"))
        first += stage.epochs
    return stages


def stage_at(stages: list[Stage], epoch: int) -> Stage:
    """The stage that trains epoch ``epoch`` (0-based); the last one past the end."""
    for stage in stages:
        if stage.holds(epoch):
            return stage
    return stages[-1]


def saved_stage(stages: list[Stage], meta: dict[str, Any]) -> Stage:
    """The stage whose optimizer a saved state holds: the one it records (a state from a run
    without stages records none: the stage of its last epoch)."""
    recorded = meta.get("stage")
    if isinstance(recorded, dict) and isinstance(recorded.get("index"), int) and 0 <= recorded["index"] < len(stages):
        return stages[recorded["index"]]
    return stage_at(stages, max(0, int(meta.get("epoch", 0)) - 1))


def stage_optimizer(stage: Stage, network: nn.Module, losses: nn.Module, terms: list) -> tuple[Any, list[bool] | None]:
    """A fresh optimizer for ``stage`` over what it trains (the student's parameters, unless
    frozen, then the losses'), and DOT's task flags per term (None for other optimizers)."""
    trained = ([] if stage.student_frozen else list(network.parameters())) + list(losses.parameters())
    if not trained:
        raise KdzooError(f"stages.{stage.index}: stage '{stage.name}' freezes the student, and no loss has parameters to train")
    task_terms = dot_task_terms(terms, losses) if stage.optimizer.name == "dot" else None
    return make_optimizer(stage, trained), task_terms
