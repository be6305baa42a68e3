"""Stages of a distill run (``stages:``): its epochs cut into slices run in order, each with
loss weights of its own and, optionally, its own optimizer, schedule and a frozen student.

For methods that pre-train or initialise before distilling: RepDistiller's two-stage
methods (``train_student.py`` calls ``helper/pretrain.py:init`` for ``factor``, ``abound``
and ``fsp``: 30 epochs on an optimizer of their own, then the distillation) are one spec
with two stages. The loss modules (connectors, paraphrasers) are the same objects through
every stage, so what one stage trains carries to the next. Torch-free.

The rules, checked at validation:

- the stages' ``epochs`` add up to the run's ``epochs`` (stage ``k`` takes the epochs after
  stage ``k - 1``'s);
- ``weights`` names loss terms of ``losses`` by name (a unique one); a term left out keeps
  its weight in ``losses``. A term of weight 0 in a stage is not computed there, so the
  modules that only it trains stay as they are (as if they were left out of the
  reference's optimizer); each stage computes at least one term;
- a stage's ``optimizer`` and ``schedule`` override the run's field by field (the fields a
  stage leaves out are the run's, unless it names another optimizer or schedule);
- a loss that declares the stage names it understands (``Loss.stages``) takes part only in
  stages of those names (a misspelt stage name would otherwise silently run the loss's
  ordinary behaviour): elsewhere its weight must be 0.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from kdzoo.errors import KdzooError, did_you_mean
from kdzoo.host.registry import Registry
from kdzoo.spec.strict import StrictModel
from kdzoo.spec.training import OptimizerSpec, ScheduleSpec, _is_task_loss

STAGE_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]*$"

StageWeight = Annotated[float, Field(ge=0)]


class StageSpec(StrictModel):
    """One stage of a distill run: a slice of its epochs with loss weights (and optionally an optimizer, a schedule, a frozen student) of its own."""

    name: str = Field(
        pattern=STAGE_NAME_PATTERN, max_length=64,
        description="the stage's name, which the losses see as `DistillBatch.stage` (unique in the run); a loss that "
        "behaves by stage declares the names it understands (ft: paraphraser, transfer; ab, fsp: init)",
    )
    epochs: int = Field(ge=1, le=100000, description="how many of the run's epochs this stage takes; the stages' epochs add up to `epochs`")
    weights: dict[str, StageWeight] = Field(
        default_factory=dict,
        description="loss term name -> its weight in this stage (>= 0); a term left out keeps its weight in `losses`. A term of "
        "weight 0 is not computed in the stage, so what only it trains stays as it is",
    )
    optimizer: OptimizerSpec | None = Field(
        None, description="this stage's optimizer, field by field over the run's (default: the run's); every stage starts "
        "a fresh one (new momentum), as the references' separate training loops do",
    )
    schedule: ScheduleSpec | None = Field(
        None, description="this stage's lr schedule over the stage's own epochs, field by field over the run's (default: the run's)",
    )
    student: Literal["train", "frozen"] = Field(
        "train", description="frozen: the student is not trained in this stage (not in its optimizer, BatchNorm statistics "
        "kept: eval mode); only the losses' modules train, e.g. FT's paraphraser (RepDistiller helper/pretrain.py)",
    )


def _as_dict(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _over(run: Any, stage: Any) -> Any:
    """A stage's optimizer or schedule over the run's: the run's fields, then the stage's
    (the stage's alone when it names another optimizer or schedule)."""
    run, stage = _as_dict(run), _as_dict(stage)
    if not isinstance(stage, dict):
        return stage  # the type check names the problem
    run = run if isinstance(run, dict) else {}
    if "name" in stage and stage["name"] != run.get("name", stage["name"]):
        return stage
    inherited = {**run, **stage}
    if inherited.get("name") != "dot":
        inherited.pop("delta", None)  # DOT's alone: a dot run's delta does not follow into an sgd stage
    return inherited


def inherit_run_settings(data: Any) -> Any:
    """The raw spec with every stage's ``optimizer`` and ``schedule`` filled in from the run's
    (before validation; a resolved spec, whose stages are complete, is unchanged)."""
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        return data
    stages = []
    for stage in data["stages"]:
        if isinstance(stage, dict):
            stage = dict(stage)
            for key in ("optimizer", "schedule"):
                if stage.get(key) is not None:
                    stage[key] = _over(data.get(key, {}), stage[key])
        stages.append(stage)
    return {**data, "stages": stages}


def declared_stages(registry: Registry, name: str) -> tuple[str, ...]:
    """The stage names loss ``name`` understands (``Loss.stages``), read from its class."""
    try:
        factory = registry.components[("loss", name)].resolve_factory()
    except KdzooError as exc:
        raise PydanticCustomError("loss_factory", "{problem}", {"problem": str(exc)}) from None
    stages = getattr(factory, "stages", ())
    return tuple(stages) if isinstance(stages, (tuple, list)) else ()


def _problem(loc: tuple, kind: str, message: str, value: Any) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError(kind, "{message}", {"message": message}), loc=loc, input=value)


def stage_weights(stage: StageSpec, terms: list[Any]) -> list[float]:
    """Each term's weight in ``stage``, in the order of ``terms`` (the spec's losses)."""
    return [stage.weights.get(term.name, term.weight) for term in terms]


def check_stages(spec: Any, registry: Registry | None) -> None:
    """Raise a ``ValidationError`` listing every problem of ``spec.stages`` (each at its
    field path: ``stages.1.weights.kdd``), or return."""
    stages, terms = spec.stages, spec.losses
    if not stages:
        return
    problems: list[InitErrorDetails] = []
    total = sum(stage.epochs for stage in stages)
    if total != spec.epochs:
        problems.append(_problem(("stages",), "stage_epochs", f"the stages' epochs add up to {total}, the run's epochs are "
                                 f"{spec.epochs}: they must be equal (each stage takes its slice of the run)",
                                 [stage.epochs for stage in stages]))
    names = [term.name for term in terms]
    seen: set[str] = set()
    for index, stage in enumerate(stages):
        if stage.name in seen:
            problems.append(_problem(("stages", index, "name"), "stage_name", f"a second stage named '{stage.name}': stage names are unique", stage.name))
        seen.add(stage.name)
        for key in stage.weights:
            if key not in names:
                problems.append(_problem(("stages", index, "weights", key), "stage_term",
                                         f"no loss term '{key}' in losses{did_you_mean(key, names)}; terms: {', '.join(names)}", key))
            elif names.count(key) > 1:
                problems.append(_problem(("stages", index, "weights", key), "stage_term",
                                         f"{names.count(key)} terms of losses are named '{key}': a stage weighs a term by a unique name", key))
        weights = stage_weights(stage, terms)
        if not any(w > 0 for w in weights):
            problems.append(_problem(("stages", index, "weights"), "stage_weights",
                                     "every term has weight 0 in this stage: a stage computes at least one", stage.weights))
        if registry is None or any(("loss", n) not in registry.components for n in names):
            continue  # unknown losses are reported at losses.N.name
        active = [term.name for term, weight in zip(terms, weights) if weight > 0]
        for name in dict.fromkeys(active):
            understood = declared_stages(registry, name)
            if understood and stage.name not in understood:
                problems.append(_problem(
                    ("stages", index, "name"), "stage_name",
                    f"loss '{name}' does not know a stage '{stage.name}'{did_you_mean(stage.name, understood)}; allowed: "
                    f"{', '.join(understood)} (a loss that declares its stages takes part only in those: give it weight 0 "
                    "in this stage, or name the stage after one of them)", stage.name,
                ))
        optimizer = stage.optimizer or spec.optimizer
        if optimizer.name == "dot":
            task = [_is_task_loss(registry, name) for name in active]
            if all(task) or not any(task):
                missing = "distillation term" if all(task) else "task term (a loss with is_task_loss, such as ce)"
                problems.append(_problem(("stages", index, "weights"), "dot_terms",
                                         f"optimizer dot needs both kinds of terms; this stage computes no {missing}", stage.weights))
    if problems:
        raise ValidationError.from_exception_data(type(spec).__name__, problems)
