"""How a run trains and is evaluated and launched: optimizer, lr schedule, evaluation and
cluster resources (spec objects shared by every run kind)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from kdzoo.errors import KdzooError
from kdzoo.host.registry import Registry
from kdzoo.spec.strict import StrictModel

DOT_DELTA = 0.075  # mdistiller's CIFAR-100 DOT configs (SOLVER.DOT.DELTA)


class OptimizerSpec(StrictModel):
    name: Literal["sgd", "adamw", "dot"] = Field("sgd", description="dot: DOT (Zhao et al. 2023), SGD with one momentum for the task terms' gradient and another for the distillation terms'")
    lr: float = Field(0.1, gt=0, description="base learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD and DOT")
    nesterov: bool = Field(True, description="SGD only")
    weight_decay: float = Field(5e-4, ge=0, description="decoupled for AdamW, L2 for SGD and DOT")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW only")
    delta: float | None = Field(
        None, ge=0, lt=1, exclude_if=lambda value: value is None,
        description=f"DOT only (default {DOT_DELTA}): the task gradient's momentum is momentum - delta, the distillation "
        "gradient's momentum + delta. Left out of the resolved spec for the other optimizers",
    )

    @model_validator(mode="after")
    def _dot_delta(self) -> OptimizerSpec:
        if self.name != "dot":
            if self.delta is not None:
                raise PydanticCustomError("dot_delta", "delta: DOT's only (name: dot), not {name}'s", {"name": self.name})
            return self
        if self.delta is None:
            self.delta = DOT_DELTA
        if not (self.momentum - self.delta >= 0 and self.momentum + self.delta < 1):
            raise PydanticCustomError("dot_delta", "delta: momentum - delta and momentum + delta must lie in [0, 1), "
                                      "got momentum {m} and delta {d}", {"m": self.momentum, "d": self.delta})
        return self


def _is_task_loss(registry: Registry, name: str) -> bool:
    """Whether loss ``name``'s class declares itself the task loss (``Loss.is_task_loss``),
    read from the class its factory names, without building it."""
    component = registry.components[("loss", name)]
    try:
        factory = component.resolve_factory()
    except KdzooError as exc:
        raise PydanticCustomError("loss_factory", "{problem}", {"problem": str(exc)}) from None
    return getattr(factory, "is_task_loss", False) is True


class ScheduleSpec(StrictModel):
    name: Literal["cosine", "multistep", "constant", "onecycle"] = Field("cosine", description="shape of the lr over the run")
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up from 0, in epochs (fractions allowed)")
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75], description="multistep: fractions of the run at which lr *= gamma")
    gamma: float = Field(0.1, gt=0, le=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine: final lr as a share of the base lr")

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if any(not 0 < m < 1 for m in value) or value != sorted(value):
            raise PydanticCustomError("milestones", "milestones must be increasing fractions of the run in (0, 1), got {v}", {"v": value})
        return value


class EvalSpec(StrictModel):
    splits: list[Literal["train", "test", "test_aug"]] = Field(default_factory=lambda: ["test"], min_length=1, description="test_aug: test images through the run's augmentation (fixed seed)")
    every: int = Field(1, ge=1, description="evaluate every N epochs (and always after the last)")
    train_limit: int | None = Field(10000, gt=0, description="evaluate the train split on at most this many images")


class LauncherSpec(StrictModel):
    """Resources of each arm of a grid run with `kdzoo run --launcher slurm` (submitit); `--partition`, `--time`, `--gpus-per-arm`, `--jobs` override them."""

    partition: str | None = Field(None, description="SLURM partition (default: the cluster's)")
    time_min: int = Field(1440, ge=1, description="wall-time limit of each job, in minutes; a job that reaches it is requeued and resumes from its last finished epoch")
    gpus_per_arm: int = Field(0, ge=0, description="GPUs of each job (an arm or a teacher); above 1, an arm trains on that many processes (DDP, `--nproc`)")
    cpus_per_arm: int | None = Field(None, ge=1, description="CPU cores of each job; also its torch threads unless the spec sets `threads`")
    mem_gb: float | None = Field(None, gt=0, description="memory of each job, in GB (default: the cluster's)")
    max_parallel: int | None = Field(None, ge=1, description="at most this many jobs of the array run at once (default: submitit's, 256)")
    extra: dict[str, Any] = Field(default_factory=dict, description="more submitit parameters, passed to `update_parameters` as they are (e.g. `slurm_account`, `slurm_qos`)")
