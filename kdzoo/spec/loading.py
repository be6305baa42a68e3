"""Reading a spec: file, ``--set`` overrides, matrix expansion, then validation of every arm."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kdzoo.errors import KdzooError, SpecError, did_you_mean
from kdzoo.host.registry import Registry
from kdzoo.spec.describe import describe_error
from kdzoo.spec.matrix import expand_matrix
from kdzoo.spec.paths import set_path
from kdzoo.spec.plugin_files import resolve_plugin_paths
from kdzoo.spec.models import INHERITED_BY_TEACHERS, SPEC_KINDS, AnySpec, DistillSpec, RunSpec


def read_spec_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise KdzooError(f"spec file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(str(path), ["(top level): not a text file (a spec is UTF-8 YAML or JSON)"]) from None
    except OSError as exc:
        raise KdzooError(f"cannot read spec file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise SpecError(str(path), [f"cannot parse {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"]) from None
    if not isinstance(data, dict):
        raise SpecError(str(path), [f"(top level): a spec is a mapping of keys, got {type(data).__name__}"])
    data.setdefault("name", re.sub(r"[^A-Za-z0-9_.-]", "-", path.stem) if path.stem[:1].isalpha() else None)
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``--set key.path=value`` (value parsed as YAML: numbers, lists, booleans).

    ``--set matrix.optimizer.lr=[0.1,0.05]`` sets the matrix entry ``optimizer.lr``:
    matrix keys are dotted paths themselves.
    """
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise KdzooError(f"--set expects key.path=value, got '{item}'")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = str(exc).splitlines()[0]
            raise KdzooError(f"--set {key}: cannot parse the value {raw!r} as YAML ({problem}); quote strings, close lists") from None
        if key.startswith("matrix.") and len(key) > len("matrix."):
            matrix = data.get("matrix")
            if matrix is not None and not isinstance(matrix, dict):
                raise KdzooError(f"--set {key}: the spec's matrix is not a mapping")
            data["matrix"] = {**(matrix or {}), key[len("matrix."):]: value}
        else:
            set_path(data, key, value)
    return data


def validate_spec(data: dict[str, Any], registry: Registry | None, source: str = "spec") -> AnySpec:
    """Validate one (already expanded) spec dict; raises SpecError listing every problem."""
    kind = data.get("kind", "distill" if "teachers" in data else "train")
    if kind not in SPEC_KINDS:
        hint = did_you_mean(str(kind), SPEC_KINDS)
        raise SpecError(source, [f"kind: unknown run kind '{kind}'{hint}; allowed: {', '.join(SPEC_KINDS)}"])
    model = SPEC_KINDS[kind]
    try:
        spec = model.model_validate({**data, "kind": kind}, context={"registry": registry})
    except ValidationError as exc:
        raise SpecError(source, [describe_error(err, prefix="", root=model) for err in exc.errors()]) from None
    if isinstance(spec, DistillSpec):
        _inherit_teacher_defaults(spec)
    if registry is not None:
        # Normalise: components that came from defaults (e.g. the default `ce` loss) get
        # their params filled in too, so a spec equals its resolved spec.yaml once reloaded
        # (teacher cache keys, resume and grid-skip checks compare resolved specs).
        launcher, tracking = spec.launcher, spec.tracking  # excluded from dumps (see RunSpec), so carried over by hand
        spec = model.model_validate(spec.model_dump(mode="json"), context={"registry": registry})
        spec.launcher, spec.tracking = launcher, tracking
    return spec


def _inherit_teacher_defaults(spec: DistillSpec) -> None:
    """Inline teachers take the fields they do not set from the spec that distils from them;
    a distilled teacher (a chain) passes them on to its own teachers in turn."""
    for index, teacher in enumerate(spec.teachers):
        if teacher.train is None:
            continue
        for field in INHERITED_BY_TEACHERS:
            if field not in teacher.train.model_fields_set:
                setattr(teacher.train, field, copy.deepcopy(getattr(spec, field)))
        if "seed" not in teacher.train.model_fields_set:
            # Distinct teachers of one run differ by seed; a run's seed moves them all.
            teacher.train.seed = spec.seed * 1000 + index + 1
        teacher.train.name = teacher.train.name or teacher.name
        if isinstance(teacher.train, DistillSpec):
            _inherit_teacher_defaults(teacher.train)


def load_spec(
    path: str | Path, registry: Registry | None, overrides: list[str] | None = None
) -> tuple[dict[str, Any], list[tuple[str, AnySpec]]]:
    """Read, override, expand and validate a spec file.

    Returns the raw (overridden) dict and the validated runs: one for a plain spec,
    one per arm for a spec with ``matrix:``. Every arm is validated before any runs.
    """
    data = apply_overrides(read_spec_file(path), overrides or [])
    resolve_plugin_paths(data, Path(path).resolve().parent, str(path))
    return data, validate_runs(data, registry, str(path))


def validate_runs(data: dict[str, Any], registry: Registry | None, source: str) -> list[tuple[str, AnySpec]]:
    """The validated runs of a spec dict (plugin paths already resolved): one for a plain
    spec, one per matrix arm; every problem of every arm in one ``SpecError``."""
    arms = expand_matrix(data, source=source)
    problems: list[str] = []
    runs: list[tuple[str, AnySpec]] = []
    if data.get("matrix") is not None:
        try:  # the matrix itself (types), without expanding
            RunSpec.model_validate({"matrix": data["matrix"]})
        except ValidationError as exc:
            raise SpecError(source, [describe_error(err, prefix="") for err in exc.errors()]) from None
    arms_with: dict[str, list[str]] = {}  # problem -> the arms that have it (a base-spec mistake is in all)
    for arm_name, arm in arms:
        try:
            runs.append((arm_name, validate_spec(arm, registry, source)))
        except SpecError as exc:
            for problem in exc.problems:
                arms_with.setdefault(problem, []).append(arm_name)
    if arms_with:
        is_grid = data.get("matrix") is not None
        problems.extend(_arm_label(names, len(arms)) + problem if is_grid else problem for problem, names in arms_with.items())
        raise SpecError(source, problems)
    return runs


def _arm_label(names: list[str], total: int, shown: int = 3) -> str:
    """Which arms a problem is in: one, a few by name, or every one."""
    if len(names) == 1:
        return f"[matrix arm {names[0]}] "
    if len(names) == total:
        return f"[all {total} matrix arms] "
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"[matrix arms {', '.join(names[:shown])}{more}] "


def json_schema() -> dict[str, Any]:
    """JSON schema of both run kinds (docs/spec.md is generated from it)."""
    return {kind: model.model_json_schema() for kind, model in SPEC_KINDS.items()}
