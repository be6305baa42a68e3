"""Smoke runs: each component built through :mod:`kdzoo.host.build` (so what it returns is
checked exactly as ``kdzoo run`` checks it) and run once on tiny inputs (the helpers of
:mod:`kdzoo.testing`), with its default params and with each non-default params set."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kdzoo.authoring.check.report import FAIL, PASS, SKIP, Checks
from kdzoo.errors import ComponentError, KdzooError, PluginError
from kdzoo.host.build import BUILDERS, plugin_code
from kdzoo.host.registry import Component, Registry

SMOKE_NUM_CLASSES = 10
SMOKE_IMAGE_SIZE = 32
# Datasets are smoke-tested with these sizes when their params have such fields
# (the defaults of a real dataset can take minutes to generate).
SMOKE_DATASET_SIZES = {"train_size": 20, "test_size": 20}
# Kinds whose factory may refuse default params with a KdzooError (a data folder, weights).
CONFIGURABLE_KINDS = ("model", "dataset")


class SmokeFailure(Exception):
    """The component ran but broke its contract; ``built`` is what the factory returned."""

    def __init__(self, message: str, built: Any = None):
        super().__init__(message)
        self.built = built


class NeedsConfiguration(Exception):
    """The factory refused these params with a KdzooError (e.g. it needs a data folder)."""


class NeedsNetworks(NeedsConfiguration):
    """The loss's taps refused the tiny test networks (e.g. deit needs a distillation head):
    reported as not run, not as a failure."""


def build(component: Component, params: Any, **context: Any) -> Any:
    """``component`` built by its kind's function of :mod:`kdzoo.host.build`."""
    returned: list[Any] = []

    def factory(validated: Any, **kwargs: Any) -> Any:
        returned.append(component.resolve_factory()(validated, **kwargs))
        return returned[-1]

    registry = Registry(components={(component.kind, component.name): replace(component, factory=factory)})
    try:
        return BUILDERS[component.kind](registry, component.name, params, **context)
    except ComponentError:
        raise  # the factory raised: reported as kdzoo run reports it
    except KdzooError as exc:
        if returned:  # the factory returned something kdzoo run refuses
            raise SmokeFailure(str(exc), returned[-1]) from exc
        raise NeedsConfiguration(str(exc)) from exc


def _finite_scalar(value: Any, what: str) -> float:
    import torch

    if not isinstance(value, torch.Tensor):
        raise SmokeFailure(f"{what} returned {type(value).__name__}, not a tensor")
    if value.ndim != 0:
        raise SmokeFailure(f"{what} returned a tensor of shape {tuple(value.shape)}, not a scalar (reduce it, e.g. .mean())")
    if not value.is_floating_point():
        raise SmokeFailure(f"{what} returned a {value.dtype} tensor, not a float scalar")
    number = float(value.detach())
    if not math.isfinite(number):
        raise SmokeFailure(f"{what} returned {number} on random logits and features")
    return number


def _loss_value(component: Component, params: Any, student: Any, teachers: Any, what: str, **batch: Any) -> tuple[Any, Any, Any]:
    """(loss, batch, output) of one step, taps, setup and forward run as the trainer runs them."""
    from kdzoo.testing import make_distill_batch

    loss = build(component, params)
    try:
        with plugin_code(component, "taps and setup"):
            step = make_distill_batch(loss, student, teachers, **batch)
    except ComponentError:
        raise
    except KdzooError as exc:  # the loss refused the networks on purpose, e.g. deit needs a distillation head
        raise NeedsNetworks(str(exc)) from exc
    with plugin_code(component, "forward"):
        output = loss(step)
    _finite_scalar(output, what)
    return loss, step, output


def smoke_loss(component: Component, params: Any) -> str:
    import torch

    from kdzoo.testing import tiny_network, tiny_network_pair

    name = f"loss '{component.name}'"
    student, teacher = tiny_network_pair()
    loss, batch, output = _loss_value(component, params, student, teacher, name, teacher_requires_grad=True)
    value = float(output.detach())
    no_student_gradient = "no gradient reaches the student's input images: the loss does not depend on the student's outputs"
    if not output.requires_grad:
        raise SmokeFailure(no_student_gradient)
    with plugin_code(component, "backward"):
        output.backward()
    grads = [g for g in (batch.images.grad, *(view.images.grad for view in batch.views.values())) if g is not None]
    if not any(bool(g.ne(0).any()) for g in grads):  # the batch's images, or those of a view the loss asked for
        raise SmokeFailure(no_student_gradient)
    if not all(bool(torch.isfinite(g).all()) for g in grads):
        raise SmokeFailure("the gradient on the student's input images is not finite")
    reached = [
        label
        for out in [*batch.teachers, *(t for view in batch.views.values() for t in view.teachers)]
        for label, tensor in [("logits", out.logits), *[(f"features['{p}']", t) for p, t in out.features.items()]]
        if tensor.grad is not None and bool(tensor.grad.ne(0).any())
    ]
    if reached:
        raise SmokeFailure(
            f"gradient reaches the teacher's {', '.join(reached)}: detach teacher outputs "
            "(teacher.logits.detach()) so that no gradient can reach a teacher"
        )
    teacher_params = {id(p) for p in teacher.parameters()}
    if any(p.grad is not None for p in teacher.parameters()):
        raise SmokeFailure("gradient reaches the teacher's parameters: the loss unfroze the teacher (requires_grad_)")
    if any(id(p) in teacher_params for p in loss.parameters()):
        raise SmokeFailure("the loss holds teacher parameters as its own: the optimizer would train the teacher")
    notes = [f"finite scalar {value:.4g}", "gradient reaches the student's images and no teacher tensor"]
    if loss.uses_teachers:
        student, first = tiny_network_pair(seed=1)
        _loss_value(component, params, student, [first, tiny_network(width=6, seed=3)], f"with two teachers, {name}")
        notes.append("2 teachers ok")
    else:
        _loss_value(component, params, tiny_network_pair()[0], [], f"without teachers, {name}")
        notes.append("train run (no teachers) ok")
    return "; ".join(notes)


def _finite_figures(figures: Any, what: str) -> dict[str, float]:
    if not isinstance(figures, dict):
        raise SmokeFailure(f"compute() {what} returned {type(figures).__name__}, not a dict of figures")
    numbers = {k: v for k, v in figures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    broken = [k for k, v in numbers.items() if not math.isfinite(v)]
    if broken:
        raise SmokeFailure(f"compute() {what} gave non-finite figures: {', '.join(broken[:5])}")
    return numbers


def _run_metric(component: Component, params: Any, networks: dict[str, Any], teachers: tuple[str, ...], student: str) -> dict[str, float]:
    from kdzoo.testing import make_eval_batch

    metric = build(component, params)
    with plugin_code(component, "reset and update"):
        metric.reset()
        for seed in (0, 1):
            metric.update(make_eval_batch(metric, networks, teachers=teachers, student=student, seed=seed))
    with plugin_code(component, "compute"):
        figures = metric.compute()
    checked = _finite_figures(figures, f"in a {'distill' if teachers else 'train'} run")
    _check_reduce(component, metric, checked)
    return checked


def _check_reduce(component: Component, metric: Any, figures: dict[str, float]) -> None:
    """Under several processes kdzoo calls ``reduce`` before ``compute``; over one process
    it must change nothing (a state the default cannot sum needs an override)."""
    from kdzoo.api import Reducer

    try:
        metric.reduce(Reducer(rank=0, world_size=1))
    except TypeError as exc:
        raise SmokeFailure(f"reduce() for multi-process evaluation: {exc}") from None
    with plugin_code(component, "compute after reduce"):
        again = metric.compute()
    changed = [k for k, v in figures.items() if not isinstance(again.get(k), (int, float)) or abs(again[k] - v) > 1e-9 * max(1.0, abs(v))]
    if changed:
        raise SmokeFailure(f"reduce() over one process changed {', '.join(changed[:3])}: it must be the identity there")


def smoke_metric(component: Component, params: Any) -> str:
    from kdzoo.testing import tiny_network_pair

    student, teacher = tiny_network_pair()
    figures = _run_metric(component, params, {"student": student, "t1": teacher}, ("t1",), "student")
    if not figures:
        raise SmokeFailure("compute() returned no numbers for a student and a teacher")
    _run_metric(component, params, {"model": student}, (), "model")  # a train run: one model, no teachers
    keys = list(figures)
    shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
    return f"{len(keys)} finite figures ({shown}); train run (no teachers) ok"


def smoke_augmentation(component: Component, params: Any) -> str:
    import torch

    from kdzoo.testing import random_images

    augmentation = build(component, params)
    images = random_images(4)
    with plugin_code(component, "augmentation"):
        out = augmentation(images.clone(), torch.Generator().manual_seed(0))
        again = augmentation(images.clone(), torch.Generator().manual_seed(0))
    if not isinstance(out, torch.Tensor):
        raise SmokeFailure(f"returned {type(out).__name__}, not a tensor")
    if out.dtype != torch.uint8:
        raise SmokeFailure(f"turned a uint8 batch into {out.dtype}: augmentations must return uint8 images")
    if out.shape != images.shape:
        raise SmokeFailure(f"turned a batch of shape {tuple(images.shape)} into {tuple(out.shape)}: the shape must not change")
    if not (isinstance(again, torch.Tensor) and torch.equal(out, again)):
        raise SmokeFailure("gave different images for the same generator seed: draw randomness only from the generator argument")
    return f"uint8 {tuple(images.shape)} -> uint8 {tuple(out.shape)}, reproducible from the generator"


def smoke_model(component: Component, params: Any) -> str:
    import torch

    from kdzoo.api import Network

    problems: list[str] = []
    try:
        network = build(component, params, num_classes=SMOKE_NUM_CLASSES, image_size=SMOKE_IMAGE_SIZE)
    except SmokeFailure as exc:
        if not isinstance(exc.built, Network):
            raise
        network, problems = exc.built, [str(exc)]  # e.g. the wrong num_classes: say what the logits are too
    taps = [*network.stages, *([network.embedding] if network.embedding else []), *network.attention]
    if network.cam is not None:
        taps += [network.cam.features, network.cam.classifier]
    missing = []
    for path in taps:
        try:
            network.submodule(path)
        except AttributeError:
            missing.append(path)
    if missing:
        raise SmokeFailure("; ".join([*problems, f"declared tap paths that are not modules of the body: {', '.join(missing)}"]))
    images = torch.rand(2, 3, SMOKE_IMAGE_SIZE, SMOKE_IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    network.eval()
    with plugin_code(component, "forward"), torch.no_grad():
        logits = network(images)
    expected = (2, SMOKE_NUM_CLASSES)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        problems.append(f"built for num_classes={SMOKE_NUM_CLASSES}, gave logits {shape} instead of {expected}")
    elif not bool(torch.isfinite(logits).all()):
        problems.append("gave non-finite logits")
    if problems:
        raise SmokeFailure("; ".join(problems))
    return f"logits {expected} for num_classes={SMOKE_NUM_CLASSES}, image_size={SMOKE_IMAGE_SIZE}; {len(taps)} tap paths resolve"


def smoke_dataset(component: Component, params: Any) -> str:
    import torch

    chosen = dict(params or {})
    shrunk = {k: v for k, v in SMOKE_DATASET_SIZES.items() if k in component.params.model_fields and k not in chosen}
    try:
        validated = component.params.model_validate({**chosen, **shrunk})
    except ValidationError:
        shrunk = {}  # keep the sizes the params give
        validated = component.params.model_validate(chosen)
    with tempfile.TemporaryDirectory(prefix="kdzoo-check-") as cache_dir:
        data = build(component, validated, seed=0, cache_dir=Path(cache_dir))
    declared = validated.model_dump()
    problems = []
    for split in ("train", "test"):
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        size = declared.get(f"{split}_size")
        if size is not None and len(labels) != size:
            problems.append(f"{split}_size={size} but the {split} split holds {len(labels)} images")
        if labels.dtype != torch.int64:
            problems.append(f"{split} labels are {labels.dtype}, not int64")
        elif len(labels) and not (int(labels.min()) >= 0 and int(labels.max()) < data.num_classes):
            problems.append(f"{split} labels leave [0, {data.num_classes})")
        masks = getattr(data, f"{split}_masks")
        if masks is not None and (masks.dtype != torch.bool or tuple(masks.shape) != (images.shape[0], *images.shape[2:])):
            problems.append(f"{split} masks are {masks.dtype} {tuple(masks.shape)}, not bool (N, H, W)")
    if declared.get("image_size") is not None and data.image_size != declared["image_size"]:
        problems.append(f"image_size={declared['image_size']} but the images are {data.image_size} px")
    if declared.get("num_classes") is not None and data.num_classes != declared["num_classes"]:
        problems.append(f"num_classes={declared['num_classes']} but the dataset has {data.num_classes} classes")
    if problems:
        raise SmokeFailure("; ".join(problems))
    mask_note = ", with masks" if data.train_masks is not None else ""
    shrunk_note = f" (run with {', '.join(f'{k}={v}' for k, v in shrunk.items())})" if shrunk else ""
    return (f"train {tuple(data.train_images.shape)}, test {tuple(data.test_images.shape)}, "
            f"{data.num_classes} classes{mask_note}{shrunk_note}")


SMOKE: dict[str, Callable[[Component, Any], str]] = {
    "loss": smoke_loss,
    "metric": smoke_metric,
    "augmentation": smoke_augmentation,
    "model": smoke_model,
    "dataset": smoke_dataset,
}


def smoke(component: Component, checks: Checks, params: dict[str, Any] | None = None, suffix: str = "") -> None:
    """One smoke run of ``component`` with ``params`` (None: its defaults), as one result."""
    import torch

    subject = f"{component.kind} '{component.name}'{suffix}"
    try:
        component.resolve_factory()
        if params is not None:
            component.params.model_validate(params)
    except PluginError as exc:
        checks.add("smoke", subject, FAIL, str(exc))
        return
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        checks.add("smoke", subject, FAIL, f"params {params} do not validate against {component.params.__name__}: {problems}")
        return
    started = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):  # the smoke run must not move the caller's random state
            torch.manual_seed(0)
            detail = SMOKE[component.kind](component, params)
    except NeedsConfiguration as exc:
        if component.kind in CONFIGURABLE_KINDS or isinstance(exc, NeedsNetworks):
            which = "its default params need" if params is None else "these params need"
            checks.add("smoke", subject, SKIP, f"not run: {which} configuration ({exc})")
        else:
            checks.add("smoke", subject, FAIL, f"the factory raised KdzooError: {exc}")
        return
    except (SmokeFailure, KdzooError) as exc:
        checks.add("smoke", subject, FAIL, str(exc))
        return
    except Exception as exc:
        checks.add("smoke", subject, FAIL, f"raised {type(exc).__name__}: {exc}")
        return
    checks.add("smoke", subject, PASS, f"{detail} ({(time.perf_counter() - started) * 1000:.0f} ms)")
