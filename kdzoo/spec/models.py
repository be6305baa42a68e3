"""The run spec: what `kdzoo run` reads, validated in full before any work starts.

Component references (``{name, params}``) are checked against the loaded plugins'
registry, and their params against the component's own pydantic model, through the
validation context; a spec therefore fails on a misspelt loss or a negative
temperature before a single tensor is allocated.
"""

from __future__ import annotations

import importlib.util
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    Discriminator,
    Field,
    ValidationError,
    ValidationInfo,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from kdzoo import rundir
from kdzoo.errors import KdzooError, did_you_mean
from kdzoo.host.registry import Registry
from kdzoo.spec.defaults import DEFAULTS
from kdzoo.spec.describe import describe_error
from kdzoo.spec.stages import StageSpec, check_stages, inherit_run_settings
from kdzoo.spec.strict import StrictModel, _registry
from kdzoo.spec.training import EvalSpec, LauncherSpec, OptimizerSpec, ScheduleSpec, _is_task_loss

IDENTIFIER_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]*$"  # run and teacher names: file names, metric keys


# Experiment trackers a run can log to (kdzoo.run.tracking); each needs the package of its name.
TrackerName = Literal["tensorboard", "wandb"]
TRACKERS: tuple[str, ...] = typing.get_args(TrackerName)


def tracker_not_installed(name: str) -> str | None:
    """Why tracker ``name`` cannot run here (its package is missing), or None."""
    if importlib.util.find_spec(name) is None:
        return f"{name} is not installed: pip install 'kdzoo[{name}]'"
    return None


MAX_NAME_LENGTH = 100  # names become directory names and metric keys


class ComponentRef(StrictModel):
    """A plugin component by name, with params validated by the component's params model."""

    kind: ClassVar[str] = ""
    name: str = Field(description="registered component name (see `kdzoo plugins`)")
    params: dict[str, Any] = Field(default_factory=dict, description="the component's own parameters")

    @model_validator(mode="before")
    @classmethod
    def _accept_bare_name(cls, data: Any) -> Any:
        # `augmentation: weak` is shorthand for `augmentation: {name: weak}`.
        return {"name": data} if isinstance(data, str) else data

    @field_validator("name")
    @classmethod
    def _known_component(cls, name: str, info: ValidationInfo) -> str:
        registry = _registry(info)
        if registry is not None and (cls.kind, name) not in registry.components:
            raise PydanticCustomError("unknown_component", "{message}", {"message": registry.unknown(cls.kind, name)})
        return name

    @field_validator("params")
    @classmethod
    def _valid_params(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        registry = _registry(info)
        name = info.data.get("name")
        if registry is None or name is None or (cls.kind, name) not in registry.components:
            return params
        component = registry.components[(cls.kind, name)]
        try:
            validated = component.params.model_validate(params)
        except ValidationError as exc:
            allowed = ", ".join(component.params.model_fields) or "none"
            raise PydanticCustomError(
                "bad_params",
                "{problems} (params of {kind} '{name}' from plugin '{plugin}'; allowed: {allowed})",
                {
                    "problems": "; ".join(describe_error(err, prefix="") for err in exc.errors()),
                    "kind": cls.kind,
                    "name": name,
                    "plugin": component.plugin,
                    "allowed": allowed,
                },
            ) from None
        # The resolved spec records every param, defaults included.
        return validated.model_dump(mode="json")


class ModelRef(ComponentRef):
    kind: ClassVar[str] = "model"


class AugmentationRef(ComponentRef):
    kind: ClassVar[str] = "augmentation"


class MetricRef(ComponentRef):
    kind: ClassVar[str] = "metric"


class LossTerm(ComponentRef):
    kind: ClassVar[str] = "loss"
    weight: float = Field(1.0, ge=0, description="weight of this term in the summed objective")


class DataSpec(ComponentRef):
    kind: ClassVar[str] = "dataset"
    name: str = DEFAULTS["dataset"]
    train_limit: int | None = Field(None, gt=0, description="use a fixed random subset of this many training images")
    test_limit: int | None = Field(None, gt=0, description="use a fixed random subset of this many test images")


class RunSpec(StrictModel):
    """Fields shared by every run kind."""

    name: str | None = Field(None, pattern=IDENTIFIER_PATTERN, max_length=MAX_NAME_LENGTH, description="run name (default: the spec file name)")
    seed: int = Field(0, ge=0, description="seeds model init, data order and augmentation")
    init_seed: int | None = Field(
        None, ge=0, exclude_if=lambda value: value is None,
        description="seeds the trained model's initialisation alone (default: seed); arms that differ only in it share "
        "data order and augmentation and train fused: students of one architecture that start apart, as mutual learning "
        "needs. Left out of the resolved spec while unset",
    )
    epochs: int = Field(10, ge=1, le=100000, description="passes over the training set")
    batch_size: int = Field(128, ge=1, le=65536, description="training batch size")
    data: DataSpec = Field(default_factory=DataSpec, description="dataset component and fixed subsets")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="SGD, AdamW or DOT")
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec, description="learning-rate schedule, stepped per batch")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast where the device supports it")
    channels_last: bool | None = Field(None, description="None: on for CNNs")
    compile: bool = Field(False, exclude_if=lambda on: not on, description="torch.compile the student's and teachers' forward (for GPUs); off by default: on the CPU it compiles for 15-30 s and buys nothing. Not inherited by inline teachers; left out of the resolved spec while false")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: all cores)")
    sync_bn: bool = Field(False, description="several GPUs (torchrun): BatchNorm -> SyncBatchNorm, statistics over the global batch")
    metrics: list[MetricRef] = Field(default_factory=lambda: [MetricRef(name=n) for n in DEFAULTS["train_metrics"]], description="metric components evaluated on each split")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="which splits, how often")
    output_dir: Path = Field(Path("runs"), description="where run directories and the teacher cache go")
    plugins: list[str] = Field(
        default_factory=list, description="plugin files (.py) this spec uses, relative to the spec file (loaded like installed plugins)"
    )
    matrix: dict[str, list[Any]] | None = Field(
        None, description="dotted path -> values; the spec expands into the product of all values. "
        "`variants:` lists mappings of dotted paths set together in one arm (optional `name`: the arm's name part)"
    )
    # How an arm is launched is not what it computes: excluded from every dump, so the
    # resolved spec.yaml, the teacher cache key, grid skipping and --resume ignore it.
    launcher: LauncherSpec | None = Field(
        None, exclude=True, description="`kdzoo run --launcher slurm`: partition, time and resources of each job (not part of the resolved spec)"
    )
    # Where a run is logged is not what it computes either: excluded the same way.
    tracking: list[TrackerName] = Field(
        default_factory=list, exclude=True,
        description="also log each epoch's metrics, the hyperparameters and the final plots to TensorBoard "
        "(RUN_DIR/tensorboard/) and/or Weights & Biases (RUN_DIR/wandb/; WANDB_PROJECT, WANDB_MODE=offline respected); "
        "`kdzoo run --track NAME` adds to it. Needs the extra of the same name (`pip install 'kdzoo[tensorboard]'`). "
        "Not part of the resolved spec (see docs/tracking.md)",
    )

    @field_validator("tracking", mode="before")
    @classmethod
    def _known_installed_trackers(cls, value: Any) -> Any:
        names = [value] if isinstance(value, str) else value  # `tracking: tensorboard` is a list of one
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return names  # the type check names the problem
        for name in names:
            if name not in TRACKERS:
                raise PydanticCustomError("tracker", "unknown tracker '{name}'{hint}; allowed: {allowed}",
                                          {"name": name, "hint": did_you_mean(name, TRACKERS), "allowed": ", ".join(TRACKERS)})
        names = list(dict.fromkeys(names))
        for name in names:  # refused before any work, not after the teachers have trained
            if (problem := tracker_not_installed(name)) is not None:
                raise PydanticCustomError("tracker_missing", "{problem}", {"problem": problem})
        return names

    @field_validator("losses", check_fields=False)  # the losses field of TrainSpec and DistillSpec
    @classmethod
    def _dot_has_both_gradients(cls, losses: list[LossTerm], info: ValidationInfo) -> list[LossTerm]:
        optimizer, registry = info.data.get("optimizer"), _registry(info)
        if optimizer is None or optimizer.name != "dot" or registry is None:
            return losses
        task = {term.name: _is_task_loss(registry, term.name) for term in losses}
        if all(task.values()) or not any(task.values()):
            missing = "distillation term" if all(task.values()) else "task term (a loss with is_task_loss, such as ce)"
            raise PydanticCustomError(
                "dot_terms", "optimizer dot gives the task terms' and the distillation terms' gradients two momenta and needs "
                "both kinds; losses {names} include no {missing}", {"missing": missing, "names": ", ".join(task)},
            )
        return losses

    @field_validator("matrix")
    @classmethod
    def _non_empty(cls, matrix: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        for path, values in (matrix or {}).items():
            if not values:
                raise PydanticCustomError("matrix", "matrix entry '{p}' has no values", {"p": path})
        return matrix


class TrainSpec(RunSpec):
    """Train one model on one dataset (a teacher, or a baseline student)."""

    kind: Literal["train"] = "train"
    model: ModelRef = Field(description="the model to train")
    augmentation: AugmentationRef = Field(default_factory=lambda: AugmentationRef(name=DEFAULTS["augmentation"]), description="training augmentation policy")
    losses: list[LossTerm] = Field(default_factory=lambda: [LossTerm(**t) for t in DEFAULTS["train_losses"]], min_length=1, description="weighted loss terms")


# Fields an inline teacher takes from its distill spec unless it sets them itself.
INHERITED_BY_TEACHERS = ("data", "device", "precision", "channels_last", "threads", "batch_size", "output_dir", "plugins")


class TeacherSpec(StrictModel):
    name: str = Field(pattern=IDENTIFIER_PATTERN, max_length=MAX_NAME_LENGTH, description="role name used in metric keys (e.g. t1)")
    checkpoint: Path | None = Field(None, description="a kdzoo checkpoint (.safetensors, its .json, or a run dir)")
    train: InlineSpec | None = Field(
        None,
        description="an inline spec, run first and cached by content: trained (kind: train, the default), or itself "
        "distilled (kind: distill: a teacher assistant (TAKD), an earlier born-again generation (BAN))",
    )
    augmentation: AugmentationRef | None = Field(
        None, description="this teacher's own view at distillation (teacher_views: own); default: its train augmentation"
    )

    @model_validator(mode="before")
    @classmethod
    def _inline_kind(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("train"), dict):
            data = {**data, "train": {"kind": "train", **data["train"]}}
        return data

    @field_validator("train")
    @classmethod
    def _not_tracked(cls, train: RunSpec | None) -> RunSpec | None:
        if train is not None and train.tracking:  # refused, not silently dropped
            raise PydanticCustomError("teacher_tracking", "tracking: an inline teacher is trained once into the teacher cache "
                                      "and is not tracked; set tracking on the distill run", {})
        return train

    @model_validator(mode="after")
    def _one_source(self, info: ValidationInfo) -> TeacherSpec:
        if (self.checkpoint is None) == (self.train is None):
            raise PydanticCustomError("teacher_source", "a teacher needs exactly one of 'checkpoint' or 'train'", {})
        if self.checkpoint is not None:
            try:  # reads the manifest only (no torch): a bad checkpoint fails before any training
                check_checkpoint_manifest(self.checkpoint, _registry(info))
            except KdzooError as exc:
                raise PydanticCustomError("checkpoint", "checkpoint: {problem}", {"problem": str(exc)}) from None
        return self


def check_checkpoint_manifest(path: Path, registry: Registry | None) -> tuple[Path, dict[str, Any], ModelRef]:
    """The checkpoint's weights path, manifest and model reference, each checked: the model
    is installed and its params valid, the class count a positive integer."""
    weights, manifest = rundir.resolve_checkpoint(path)
    classes = manifest.get("num_classes")
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise KdzooError(f"{rundir.manifest_path(weights)}: num_classes must be a positive integer (got {classes!r})")
    try:
        ref = ModelRef.model_validate(manifest["model"], context={"registry": registry})
    except ValidationError as exc:
        problems = "; ".join(describe_error(err, prefix="model") for err in exc.errors())
        raise KdzooError(f"{rundir.manifest_path(weights)}: {problems}") from None
    return weights, manifest, ref


class StudentSpec(StrictModel):
    model: ModelRef = Field(description="the student model")


class DistillSpec(RunSpec):
    """Distil a student from one or more teachers."""

    kind: Literal["distill"] = "distill"
    student: StudentSpec = Field(description="the model being distilled")
    teachers: list[TeacherSpec] = Field(min_length=1, description="one or more teachers (checkpoint or inline train spec)")
    augmentation: AugmentationRef = Field(default_factory=lambda: AugmentationRef(name=DEFAULTS["augmentation"]), description="the student's augmentation (and the teachers', with shared views)")
    losses: list[LossTerm] = Field(
        default_factory=lambda: [LossTerm(**t) for t in DEFAULTS["distill_losses"]],
        min_length=1,
        description="weighted loss terms (default: the study's 0.6 CE + 0.4 KD at T=3)",
    )
    teacher_views: Literal["shared", "own"] = Field(
        "shared", description="shared: teachers see the student's augmented batch (the study); own: each its own augmentation"
    )
    metrics: list[MetricRef] = Field(default_factory=lambda: [MetricRef(name=n) for n in DEFAULTS["distill_metrics"]], description="metric components evaluated on each split")
    stages: list[StageSpec] = Field(
        default_factory=list, exclude_if=lambda stages: not stages,
        description="the epochs in slices run in order, each with its own loss weights (and optionally optimizer, schedule, "
        "a frozen student): pre-training or initialisation stages before distilling (see 'Stages' above). "
        "Left out of the resolved spec while empty",
    )

    @model_validator(mode="before")
    @classmethod
    def _stages_inherit(cls, data: Any) -> Any:
        return inherit_run_settings(data)

    @model_validator(mode="after")
    def _valid_stages(self, info: ValidationInfo) -> DistillSpec:
        check_stages(self, _registry(info))
        return self

    @field_validator("teachers")
    @classmethod
    def _unique_names(cls, teachers: list[TeacherSpec]) -> list[TeacherSpec]:
        names = [t.name for t in teachers]
        duplicates = sorted({n for n in names if names.count(n) > 1} | ({"student"} & set(names)))
        if duplicates:
            raise PydanticCustomError("teacher_names", "teacher names must be unique and not 'student': {d}", {"d": duplicates})
        return teachers


def _inline_kind_of(value: Any) -> str | None:
    return value.get("kind", "train") if isinstance(value, dict) else getattr(value, "kind", None)


# An inline teacher is trained (kind: train) or itself distilled (kind: distill): chosen by
# its kind, so an invalid one reports the errors of its own kind only.
InlineSpec = Annotated[
    Annotated[TrainSpec, Tag("train")] | Annotated[DistillSpec, Tag("distill")],
    Discriminator(_inline_kind_of),
]

TeacherSpec.model_rebuild()  # an inline teacher may itself be a DistillSpec (teacher chains)

SPEC_KINDS: dict[str, type[RunSpec]] = {"train": TrainSpec, "distill": DistillSpec}
AnySpec = TrainSpec | DistillSpec
