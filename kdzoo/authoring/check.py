"""``kdzoo plugins check``: does a plugin load, register and run the way kdzoo needs?

:func:`check_plugin` takes a distribution name (``kdzoo-example-plugin``), an
entry-point name (``kdzoo-example``) or an importable module (``kdzoo_example``) and
returns a :class:`CheckReport`: one pass / fail / skip line per check, each with its
reason. The checks, in order (a plugin that cannot be imported or that needs a newer
plugin API stops there):

1. the entry point resolves and its module imports;
2. the plugin API it declares (``KDZOO_PLUGIN_API``) is one this kdzoo provides;
3. every hook implementation matches a hookspec: pluggy's validation plus kdzoo's own
   (misspelt or unmarked hooks, component hooks that do not take ``register``);
4. its source never unpickles (``pickle.load``, ``torch.load`` without
   ``weights_only=True``): kdzoo's security model, see docs/plugins.md;
5. every component registers: a name unique among this and the other installed
   plugins, a description, a pydantic params model that forbids unknown keys and
   whose defaults validate (via :func:`kdzoo.host.registry.make_register`);
6. a smoke run of every component with its default params on tiny inputs (the
   helpers of :mod:`kdzoo.testing`): see the ``_smoke_*`` functions.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import importlib.util
import inspect
import json
import math
import tempfile
import time
import types
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pluggy
from pydantic import ValidationError

from kdzoo import PLUGIN_API_VERSION
from kdzoo.host import hookspecs
from kdzoo.authoring.catalogue import normalise
from kdzoo.errors import KdzooError, PluginError, did_you_mean
from kdzoo.host.loading import load_plugins, new_manager, plugin_entry_points, required_api
from kdzoo.host.registry import Component, Registry, make_register

PASS, FAIL, SKIP = "pass", "fail", "skip"

SMOKE_NUM_CLASSES = 10
SMOKE_IMAGE_SIZE = 32
# Datasets are smoke-tested with these sizes when their params have such fields
# (the defaults of a real dataset can take minutes to generate).
SMOKE_DATASET_SIZES = {"train_size": 20, "test_size": 20}


# ----------------------------------------------------------------------------- report
@dataclass
class CheckResult:
    plugin: str
    check: str  # resolve, import, plugin-api, hook, security, register, smoke
    subject: str  # what was checked: the plugin, a hook function, "loss 'kd'"
    status: str  # pass, fail or skip
    detail: str


@dataclass
class PluginSummary:
    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    api: str | None = None
    components: dict[str, list[str]] = field(default_factory=dict)  # kind -> names


@dataclass
class CheckReport:
    target: str
    plugins: list[PluginSummary] = field(default_factory=list)
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.results) and not any(r.status == FAIL for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == FAIL]

    def counts(self) -> dict[str, int]:
        return {status: sum(r.status == status for r in self.results) for status in (PASS, FAIL, SKIP)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "ok": self.ok,
            "counts": self.counts(),
            "plugins": [asdict(p) for p in self.plugins],
            "results": [asdict(r) for r in self.results],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        lines = [f"kdzoo plugins check {self.target}"]
        width = max((len(r.subject) for r in self.results), default=0)
        check_width = max((len(r.check) for r in self.results), default=0)
        shown_plugin = None
        for result in self.results:
            if result.plugin != shown_plugin:
                shown_plugin = result.plugin
                lines.append(self._plugin_heading(result.plugin))
            lines.append(f"  {result.status.upper():4}  {result.check:<{check_width}}  {result.subject:<{width}}  {result.detail}")
        counts = self.counts()
        verdict = "OK" if self.ok else "FAILED"
        lines.append(f"{verdict}: {counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped")
        return "\n".join(lines)

    def _plugin_heading(self, name: str) -> str:
        summary = next((p for p in self.plugins if p.name == name), None)
        if summary is None:
            return f"{name}:"
        where = [f"module {summary.module}"]
        if summary.distribution:
            where.insert(0, f"distribution {summary.distribution} {summary.version or ''}".rstrip())
        return f"plugin '{name}' ({', '.join(where)}):"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _Checks:
    """Collects the results of one plugin's checks."""

    def __init__(self, report: CheckReport, plugin: str):
        self.report = report
        self.plugin = plugin

    def add(self, check: str, subject: str, status: str, detail: str) -> CheckResult:
        result = CheckResult(self.plugin, check, subject, status, _one_line(detail))
        self.report.results.append(result)
        return result


# ----------------------------------------------------------------------------- resolving the target
@dataclass
class _Target:
    name: str  # the plugin name kdzoo uses (entry-point name, or the module name)
    module: str
    entry_point: md.EntryPoint | None = None

    @property
    def distribution(self) -> md.Distribution | None:
        return self.entry_point.dist if self.entry_point is not None else None

    def load(self) -> Any:  # the hook module (checked to be a module by the caller)
        if self.entry_point is not None:
            return self.entry_point.load()
        return importlib.import_module(self.module)


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that fails, or a relative name
        return False


def _resolve(target: str, checks: _Checks) -> list[_Target]:
    eps = plugin_entry_points()
    by_name = [ep for ep in eps if ep.name == target]
    by_dist = [ep for ep in eps if ep.dist is not None and normalise(ep.dist.metadata["Name"]) == normalise(target)]
    by_module = [ep for ep in eps if ep.value.partition(":")[0].strip() == target]
    found = by_name or by_dist or by_module
    if found:
        return [_Target(ep.name, ep.value.partition(":")[0].strip(), ep) for ep in found]
    try:
        dist = md.distribution(target)
    except md.PackageNotFoundError:
        dist = None
    if dist is not None:
        checks.add(
            "resolve", target, FAIL,
            f"distribution {dist.metadata['Name']} {dist.version} is installed but declares no entry point in the "
            f"'{hookspecs.ENTRY_POINT_GROUP}' group; add to its pyproject.toml: "
            f'[project.entry-points.{hookspecs.ENTRY_POINT_GROUP}] my-plugin = "my_plugin_module"',
        )
        return []
    if _module_exists(target):
        return [_Target(target, target)]
    known = [ep.name for ep in eps] + [ep.dist.metadata["Name"] for ep in eps if ep.dist is not None]
    checks.add(
        "resolve", target, FAIL,
        f"no installed plugin, distribution or importable module named '{target}'{did_you_mean(target, known)}; "
        f"installed plugins: {', '.join(ep.name for ep in eps) or 'none'}",
    )
    return []


# ----------------------------------------------------------------------------- API and hooks
def _check_api(module: types.ModuleType, checks: _Checks) -> tuple[int, int] | None:
    """The plugin API the module needs, or None when kdzoo would refuse it."""
    provided = ".".join(map(str, PLUGIN_API_VERSION))
    try:
        required = required_api(module)
    except (TypeError, ValueError) as exc:
        checks.add("plugin-api", "KDZOO_PLUGIN_API", FAIL,
                   f"{getattr(module, 'KDZOO_PLUGIN_API', None)!r} is not a (major, minor) tuple of ints: {exc}")
        return None
    needed = ".".join(map(str, required))
    if required > PLUGIN_API_VERSION:
        checks.add("plugin-api", "KDZOO_PLUGIN_API", FAIL,
                   f"needs kdzoo plugin API {needed}, this kdzoo provides {provided}: kdzoo refuses to load it "
                   "(upgrade kdzoo, or lower KDZOO_PLUGIN_API if the plugin uses nothing newer)")
        return None
    if hasattr(module, "KDZOO_PLUGIN_API"):
        checks.add("plugin-api", "KDZOO_PLUGIN_API", PASS, f"needs plugin API {needed}; kdzoo provides {provided}")
    else:
        checks.add("plugin-api", "KDZOO_PLUGIN_API", PASS,
                   f"not declared, taken as {needed} (kdzoo provides {provided}); declare "
                   f"KDZOO_PLUGIN_API = {tuple(required)} in {module.__name__} to say what the plugin needs")
    return required


def _hookspec_names(manager: pluggy.PluginManager) -> list[str]:
    return sorted(name for name in dir(hookspecs) if manager.parse_hookspec_opts(hookspecs, name) is not None)


def _argument_names(function: Callable[..., Any]) -> list[str]:
    return [
        p.name
        for p in inspect.signature(function).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
    ]


def _hook_signature(hook: str) -> str:
    return f"{hook}({', '.join(_argument_names(getattr(hookspecs, hook)))})"


def _check_hookimpl(name: str, function: Callable[..., Any], opts: dict[str, Any], spec_names: list[str]) -> str | None:
    """Why a ``@hookimpl`` function does not fit its hookspec, or None when it does."""
    hook = opts.get("specname") or name
    if hook not in spec_names:
        return f"@hookimpl {name}() matches no kdzoo hook{did_you_mean(hook, spec_names)}; the hooks are {', '.join(spec_names)}"
    if hook in hookspecs.COMPONENT_HOOKS:
        if opts.get("specname"):
            return f"kdzoo calls component hooks by function name: rename {name}() to {hook}() instead of using specname"
        if opts.get("wrapper") or opts.get("hookwrapper"):
            return f"{hook}() cannot be a wrapper: kdzoo calls it once per plugin with its own register()"
    spec_args = _argument_names(getattr(hookspecs, hook))
    impl_args = _argument_names(function)
    unknown = [arg for arg in impl_args if arg not in spec_args]
    expected = _hook_signature(hook)
    if unknown:
        quoted = ", ".join(f"'{arg}'" for arg in unknown)
        hints = "".join(did_you_mean(arg, spec_args) for arg in unknown)
        return f"{name}({', '.join(impl_args)}): argument {quoted} is not in the hookspec {expected}{hints}"
    if hook in hookspecs.COMPONENT_HOOKS and "register" not in impl_args:
        return f"{name}({', '.join(impl_args)}) must take the argument 'register': kdzoo calls {expected}"
    return None


def _check_hooks(module: types.ModuleType, plugin: str, checks: _Checks) -> set[str]:
    """Check every hook implementation of ``module``; returns the component hooks that may be called."""
    manager = new_manager()
    spec_names = _hookspec_names(manager)
    usable: set[str] = set()
    failed = seen = False
    for name in sorted(dir(module)):
        function = getattr(module, name, None)
        if not callable(function):
            continue
        opts = manager.parse_hookimpl_opts(module, name)
        if opts is not None:
            seen = True
            problem = _check_hookimpl(name, function, dict(opts), spec_names)
            if problem is None:
                hook = opts.get("specname") or name
                checks.add("hook", f"{name}()", PASS, f"matches the hookspec {_hook_signature(hook)}")
                usable.add(hook)
            else:
                failed = True
                checks.add("hook", f"{name}()", FAIL, problem)
        elif name in spec_names:
            failed = seen = True
            checks.add("hook", f"{name}()", FAIL,
                       f"{name}() is named like a hook but not marked @hookimpl: decorate it with "
                       "@hookimpl (from kdzoo import hookimpl) so that pluggy sees it")
        elif name.startswith("register_") and getattr(function, "__module__", None) == module.__name__:
            hint = did_you_mean(name, spec_names)
            if hint:
                failed = True
                checks.add("hook", f"{name}()", FAIL, f"{name}() looks like a misspelt hook{hint}; kdzoo never calls it")
    if not seen:
        checks.add("hook", "hooks", FAIL, f"{module.__name__} implements no kdzoo hook; the hooks are {', '.join(spec_names)}")
        return set()
    # pluggy's own validation, in case it objects to something the checks above let through.
    try:
        manager.register(module, name=plugin)
        manager.check_pending()
    except (ValueError, pluggy.PluginValidationError) as exc:
        if not failed:
            checks.add("hook", "hooks", FAIL, f"pluggy refused the plugin: {exc}")
        return set()
    return usable & set(hookspecs.COMPONENT_HOOKS)


# ----------------------------------------------------------------------------- unpickling
def _source_files(module: types.ModuleType) -> list[Path]:
    if hasattr(module, "__path__"):  # a package: every module in it
        return sorted(p for folder in module.__path__ for p in Path(folder).rglob("*.py"))
    return [Path(module.__file__)] if getattr(module, "__file__", None) else []


def _unpickling_call(node: ast.Call) -> str | None:
    """Why ``node`` can run code hidden in a file (pickle), or None."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
    keywords = {k.arg: k.value for k in node.keywords}

    def is_true(key: str) -> bool:
        return isinstance(keywords.get(key), ast.Constant) and keywords[key].value is True

    if owner in ("pickle", "cPickle", "dill", "joblib") and name in ("load", "loads"):
        return f"{owner}.{name}() unpickles"
    if owner == "torch" and name == "load" and not is_true("weights_only"):
        return "torch.load() without weights_only=True unpickles"
    if name == "load" and owner in ("np", "numpy") and is_true("allow_pickle"):
        return f"{owner}.load(allow_pickle=True) unpickles"
    return None


def _check_unpickling(module: types.ModuleType, checks: _Checks) -> None:
    """kdzoo's security model: files are read as tensors and JSON, never unpickled."""
    files = _source_files(module)
    root = Path(next(iter(module.__path__))).parent if hasattr(module, "__path__") else None
    found = []
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (OSError, SyntaxError, ValueError):
            continue
        found += [
            f"{path.relative_to(root) if root else path.name}:{node.lineno}: {reason}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and (reason := _unpickling_call(node))
        ]
    if found:
        checks.add("security", "unpickling", FAIL,
                   f"{'; '.join(found)}: a downloaded file could run code. Read tensors with safetensors "
                   "(or torch.load(..., weights_only=True)) and everything else as JSON")
    else:
        checks.add("security", "unpickling", PASS, f"no pickle loading in {len(files)} source file{'s' * (len(files) != 1)}")


# ----------------------------------------------------------------------------- registration
def _explain(exc: BaseException) -> str:
    """A PluginError's message, with a wrapped pydantic error spelt out field by field."""
    cause = exc.__cause__
    message = str(exc)
    if isinstance(cause, ValidationError) and str(cause) in message:
        fields = "; ".join(f"{'.'.join([cause.title, *map(str, e['loc'])])}: {e['msg']}" for e in cause.errors())
        return message.replace(str(cause), fields)
    return message


def _installed_components(exclude: set[str]) -> Registry:
    """The components of the other installed plugins, to catch names this plugin would clash with."""
    host = load_plugins()
    return Registry(components={key: c for key, c in host.registry.components.items() if c.plugin not in exclude})


def _register(module: types.ModuleType, plugin: str, hooks: set[str], others: Registry, checks: _Checks) -> list[Component]:
    """Call the plugin's component hooks with kdzoo's own ``register`` (one error per component, not one per plugin)."""
    registry = Registry(components=dict(others.components))
    for hook_name, kind in hookspecs.COMPONENT_HOOKS.items():
        if hook_name not in hooks:
            continue
        register = make_register(registry, kind, plugin)

        def register_each(name, factory, params=None, description="", *, _register=register, _kind=kind):
            try:
                _register(name, factory, params=params, description=description)
            except PluginError as exc:
                checks.add("register", f"{_kind} '{name}'", FAIL, _explain(exc))

        try:
            getattr(module, hook_name)(register=register_each)
        except Exception as exc:
            checks.add("register", f"{hook_name}()", FAIL, f"raised {type(exc).__name__}: {exc}")
    return [c for c in registry.components.values() if c.plugin == plugin]


def _check_registered(component: Component, checks: _Checks) -> bool:
    subject = f"{component.kind} '{component.name}'"
    problems = []
    if not component.description:
        problems.append("no description: pass description='...' to register() or give the factory a docstring")
    params = component.params
    if params.model_config.get("extra") != "forbid":
        problems.append(
            f"params model {params.__name__} accepts unknown keys, so a misspelt param in a spec is silently "
            "ignored: set model_config = ConfigDict(extra='forbid')"
        )
    try:
        defaults = params.model_validate({}).model_dump(mode="json")
        json.dumps(defaults)
    except Exception as exc:  # run manifests record the params as JSON
        problems.append(f"the default params of {params.__name__} cannot be written as JSON: {exc}")
        defaults = {}
    try:
        params.model_json_schema()
    except Exception as exc:  # `kdzoo plugins --json` and `kdzoo schema` describe params by their schema
        problems.append(f"params model {params.__name__} has no JSON schema: {exc}")
    if problems:
        checks.add("register", subject, FAIL, "; ".join(problems))
        return False
    shown = ", ".join(f"{k}={v!r}" for k, v in defaults.items()) or "none"
    checks.add("register", subject, PASS, f"unique name, description, params {params.__name__} (defaults: {shown})")
    return True


# ----------------------------------------------------------------------------- smoke runs
class _SmokeFailure(Exception):
    """The component ran but broke its contract."""


class _NeedsConfiguration(Exception):
    """The component cannot be built from default params alone (e.g. it needs a data folder)."""


def _finite_scalar(value: Any, what: str) -> float:
    import torch

    if not isinstance(value, torch.Tensor):
        raise _SmokeFailure(f"{what} returned {type(value).__name__}, not a tensor")
    if value.ndim != 0:
        raise _SmokeFailure(f"{what} returned a tensor of shape {tuple(value.shape)}, not a scalar (reduce it, e.g. .mean())")
    if not value.is_floating_point():
        raise _SmokeFailure(f"{what} returned a {value.dtype} tensor, not a float scalar")
    number = float(value.detach())
    if not math.isfinite(number):
        raise _SmokeFailure(f"{what} returned {number} on random logits and features")
    return number


def _smoke_loss(component: Component) -> str:
    import torch

    from kdzoo.api import Loss
    from kdzoo.testing import make_distill_batch, tiny_network, tiny_network_pair

    loss = component.build()
    if not isinstance(loss, Loss):
        raise _SmokeFailure(f"the factory returned {type(loss).__name__}, not a kdzoo.api.Loss")
    student, teacher = tiny_network_pair()
    batch = make_distill_batch(loss, student, teacher, teacher_requires_grad=True)
    output = loss(batch)
    value = _finite_scalar(output, "the loss")
    no_student_gradient = "no gradient reaches the student's input images: the loss does not depend on the student's outputs"
    if not output.requires_grad:
        raise _SmokeFailure(no_student_gradient)
    output.backward()
    grad = batch.images.grad
    if grad is None or not bool(grad.ne(0).any()):
        raise _SmokeFailure(no_student_gradient)
    if not bool(torch.isfinite(grad).all()):
        raise _SmokeFailure("the gradient on the student's input images is not finite")
    reached = [
        name
        for out in batch.teachers
        for name, tensor in [("logits", out.logits), *[(f"features['{p}']", t) for p, t in out.features.items()]]
        if tensor.grad is not None and bool(tensor.grad.ne(0).any())
    ]
    if reached:
        raise _SmokeFailure(
            f"gradient reaches the teacher's {', '.join(reached)}: detach teacher outputs "
            "(teacher.logits.detach()) so that no gradient can reach a teacher"
        )
    teacher_params = {id(p) for p in teacher.parameters()}
    if any(p.grad is not None for p in teacher.parameters()):
        raise _SmokeFailure("gradient reaches the teacher's parameters: the loss unfroze the teacher (requires_grad_)")
    if any(id(p) in teacher_params for p in loss.parameters()):
        raise _SmokeFailure("the loss holds teacher parameters as its own: the optimizer would train the teacher")
    notes = [f"finite scalar {value:.4g}", "gradient reaches the student's images and no teacher tensor"]
    if loss.uses_teachers:
        two = component.build()
        student, first = tiny_network_pair(seed=1)
        second = tiny_network(width=6, seed=3)
        _finite_scalar(two(make_distill_batch(two, student, [first, second])), "with two teachers, the loss")
        notes.append("2 teachers ok")
    else:
        alone = component.build()
        _finite_scalar(alone(make_distill_batch(alone, tiny_network_pair()[0], [])), "without teachers, the loss")
        notes.append("train run (no teachers) ok")
    return "; ".join(notes)


def _finite_figures(figures: Any, what: str) -> dict[str, float]:
    if not isinstance(figures, dict):
        raise _SmokeFailure(f"compute() {what} returned {type(figures).__name__}, not a dict of figures")
    numbers = {k: v for k, v in figures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    broken = [k for k, v in numbers.items() if not math.isfinite(v)]
    if broken:
        raise _SmokeFailure(f"compute() {what} gave non-finite figures: {', '.join(broken[:5])}")
    return numbers


def _run_metric(component: Component, networks: dict[str, Any], teachers: tuple[str, ...], student: str) -> dict[str, float]:
    from kdzoo.api import Metric
    from kdzoo.testing import make_eval_batch

    metric = component.build()
    if not isinstance(metric, Metric):
        raise _SmokeFailure(f"the factory returned {type(metric).__name__}, not a kdzoo.api.Metric")
    metric.reset()
    for seed in (0, 1):
        metric.update(make_eval_batch(metric, networks, teachers=teachers, student=student, seed=seed))
    return _finite_figures(metric.compute(), f"in a {'distill' if teachers else 'train'} run")


def _smoke_metric(component: Component) -> str:
    from kdzoo.testing import tiny_network_pair

    student, teacher = tiny_network_pair()
    figures = _run_metric(component, {"student": student, "t1": teacher}, ("t1",), "student")
    if not figures:
        raise _SmokeFailure("compute() returned no numbers for a student and a teacher")
    _run_metric(component, {"model": student}, (), "model")  # a train run: one model, no teachers
    keys = list(figures)
    shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
    return f"{len(keys)} finite figures ({shown}); train run (no teachers) ok"


def _smoke_augmentation(component: Component) -> str:
    import torch

    from kdzoo.testing import random_images

    augmentation = component.build()
    if not callable(augmentation):
        raise _SmokeFailure(f"the factory returned {type(augmentation).__name__}, which is not callable")
    images = random_images(4)
    out = augmentation(images.clone(), torch.Generator().manual_seed(0))
    if not isinstance(out, torch.Tensor):
        raise _SmokeFailure(f"returned {type(out).__name__}, not a tensor")
    if out.dtype != torch.uint8:
        raise _SmokeFailure(f"turned a uint8 batch into {out.dtype}: augmentations must return uint8 images")
    if out.shape != images.shape:
        raise _SmokeFailure(f"turned a batch of shape {tuple(images.shape)} into {tuple(out.shape)}: the shape must not change")
    again = augmentation(images.clone(), torch.Generator().manual_seed(0))
    if not torch.equal(out, again):
        raise _SmokeFailure("gave different images for the same generator seed: draw randomness only from the generator argument")
    return f"uint8 {tuple(images.shape)} -> uint8 {tuple(out.shape)}, reproducible from the generator"


def _smoke_model(component: Component) -> str:
    import torch

    from kdzoo.api import Network

    try:
        network = component.build(num_classes=SMOKE_NUM_CLASSES, image_size=SMOKE_IMAGE_SIZE)
    except KdzooError as exc:
        raise _NeedsConfiguration(str(exc)) from exc
    if not isinstance(network, Network):
        raise _SmokeFailure(f"the factory returned {type(network).__name__}, not a kdzoo.api.Network")
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
        raise _SmokeFailure(f"declared tap paths that are not modules of the body: {', '.join(missing)}")
    images = torch.rand(2, 3, SMOKE_IMAGE_SIZE, SMOKE_IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    network.eval()
    with torch.no_grad():
        logits = network(images)
    expected = (2, SMOKE_NUM_CLASSES)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise _SmokeFailure(f"built for num_classes={SMOKE_NUM_CLASSES}, gave logits {shape} instead of {expected}")
    if not bool(torch.isfinite(logits).all()):
        raise _SmokeFailure("gave non-finite logits")
    return f"logits {expected} for num_classes={SMOKE_NUM_CLASSES}, image_size={SMOKE_IMAGE_SIZE}; {len(taps)} tap paths resolve"


def _smoke_dataset(component: Component) -> str:
    import torch

    from kdzoo.api import ImageData

    params = component.params.model_validate({})
    shrunk = {k: v for k, v in SMOKE_DATASET_SIZES.items() if k in component.params.model_fields}
    try:
        params = component.params.model_validate({**params.model_dump(), **shrunk})
    except ValidationError:
        shrunk = {}  # keep the defaults
    try:
        with tempfile.TemporaryDirectory(prefix="kdzoo-check-") as cache_dir:
            data = component.build(params, seed=0, cache_dir=Path(cache_dir))
    except KdzooError as exc:
        raise _NeedsConfiguration(str(exc)) from exc
    if not isinstance(data, ImageData):
        raise _SmokeFailure(f"the factory returned {type(data).__name__}, not a kdzoo.api.ImageData")
    declared = params.model_dump()
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
        raise _SmokeFailure("; ".join(problems))
    mask_note = ", with masks" if data.train_masks is not None else ""
    shrunk_note = f" (run with {', '.join(f'{k}={v}' for k, v in shrunk.items())})" if shrunk else ""
    return (f"train {tuple(data.train_images.shape)}, test {tuple(data.test_images.shape)}, "
            f"{data.num_classes} classes{mask_note}{shrunk_note}")


_SMOKE: dict[str, Callable[[Component], str]] = {
    "loss": _smoke_loss,
    "metric": _smoke_metric,
    "augmentation": _smoke_augmentation,
    "model": _smoke_model,
    "dataset": _smoke_dataset,
}


def _smoke(component: Component, checks: _Checks) -> None:
    import torch

    subject = f"{component.kind} '{component.name}'"
    try:
        component.resolve_factory()
    except PluginError as exc:
        checks.add("smoke", subject, FAIL, str(exc))
        return
    started = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):  # the smoke run must not move the caller's random state
            torch.manual_seed(0)
            detail = _SMOKE[component.kind](component)
    except _NeedsConfiguration as exc:
        checks.add("smoke", subject, SKIP, f"not run: its default params need configuration ({exc})")
        return
    except _SmokeFailure as exc:
        checks.add("smoke", subject, FAIL, str(exc))
        return
    except Exception as exc:
        checks.add("smoke", subject, FAIL, f"raised {type(exc).__name__}: {exc}")
        return
    checks.add("smoke", subject, PASS, f"{detail} ({(time.perf_counter() - started) * 1000:.0f} ms)")


# ----------------------------------------------------------------------------- entry point
def _check_one(target: _Target, report: CheckReport, checks: _Checks) -> None:
    ep = target.entry_point
    dist = target.distribution
    summary = PluginSummary(
        name=target.name,
        module=target.module,
        distribution=dist.metadata["Name"] if dist is not None else None,
        version=dist.version if dist is not None else None,
    )
    report.plugins.append(summary)
    try:
        module = target.load()
    except Exception as exc:
        what = f"entry point {ep.name} = {ep.value}" if ep is not None else f"module {target.module}"
        checks.add("import", target.module, FAIL, f"{what} cannot be imported: {type(exc).__name__}: {exc}")
        return
    if ep is not None:
        checks.add("import", target.module, PASS, f"entry point {ep.name} = {ep.value} imports")
    else:
        checks.add("import", target.module, PASS,
                   f"module imports; it is not installed with an entry point in the '{hookspecs.ENTRY_POINT_GROUP}' "
                   "group, so kdzoo will not load it until it is")
    if not isinstance(module, types.ModuleType):
        checks.add("import", target.module, FAIL, f"the entry point names a {type(module).__name__}; it must name the hook module")
        return
    required = _check_api(module, checks)
    if required is None:
        return
    summary.api = ".".join(map(str, required))
    hooks = _check_hooks(module, target.name, checks)
    _check_unpickling(module, checks)
    failures_before = len(report.failures)
    components = _register(module, target.name, hooks, _installed_components(exclude={target.name}), checks)
    if hooks and not components and len(report.failures) == failures_before:
        checks.add("register", target.name, FAIL, f"{', '.join(sorted(hooks))} registered nothing")
    for component in sorted(components, key=lambda c: (hookspecs.KINDS.index(c.kind), c.name)):
        summary.components.setdefault(component.kind, []).append(component.name)
        if _check_registered(component, checks):
            _smoke(component, checks)


@contextmanager
def _one_thread():
    """Smoke runs use tiny tensors: one thread is fastest, and on a busy machine a pool
    of threads waiting for each other makes them many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def check_plugin(target: str) -> CheckReport:
    """Check the plugin named by ``target`` (distribution, entry point or module name)."""
    report = CheckReport(target)
    with _one_thread():
        for resolved in _resolve(target, _Checks(report, target)):
            _check_one(resolved, report, _Checks(report, resolved.name))
    return report
