"""The run spec: pydantic models (:mod:`.models`), reading and matrix expansion
(:mod:`.loading`), error lines (:mod:`.describe`), the default component names
(:mod:`.defaults`) and the generated reference docs/spec.md (:mod:`.doc`)."""

from kdzoo.spec.describe import describe_error
from kdzoo.spec.loading import apply_overrides, expand_matrix, json_schema, load_spec, read_spec_file, set_path, validate_spec
from kdzoo.spec.models import (
    INHERITED_BY_TEACHERS,
    SPEC_KINDS,
    AnySpec,
    AugmentationRef,
    ComponentRef,
    DataSpec,
    DistillSpec,
    EvalSpec,
    LauncherSpec,
    LossTerm,
    MetricRef,
    ModelRef,
    OptimizerSpec,
    RunSpec,
    ScheduleSpec,
    StudentSpec,
    TeacherSpec,
    TrainSpec,
)
from kdzoo.spec.stages import StageSpec

__all__ = [
    "INHERITED_BY_TEACHERS", "SPEC_KINDS", "AnySpec", "AugmentationRef", "ComponentRef", "DataSpec", "DistillSpec",
    "EvalSpec", "LauncherSpec", "LossTerm", "MetricRef", "ModelRef", "OptimizerSpec", "RunSpec", "ScheduleSpec", "StageSpec",
    "StudentSpec", "TeacherSpec", "TrainSpec", "apply_overrides", "describe_error", "expand_matrix", "json_schema", "load_spec",
    "read_spec_file", "set_path", "validate_spec",
]
