"""Reading a spec: file, ``--set`` overrides, matrix expansion, then validation of every arm."""

from __future__ import annotations

import copy
import itertools
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kdzoo.errors import KdzooError, SpecError, did_you_mean
from kdzoo.host.registry import Registry
from kdzoo.spec.describe import describe_error
from kdzoo.spec.plugin_files import resolve_plugin_paths
from kdzoo.spec.models import INHERITED_BY_TEACHERS, SPEC_KINDS, AnySpec, DistillSpec, RunSpec


def read_spec_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise KdzooError(f"spec file not found: {path}")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise SpecError(str(path), [f"cannot parse {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"]) from None
    if not isinstance(data, dict):
        raise SpecError(str(path), [f"(top level): a spec is a mapping of keys, got {type(data).__name__}"])
    data.setdefault("name", re.sub(r"[^A-Za-z0-9_.-]", "-", path.stem) if path.stem[:1].isalpha() else None)
    return data


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.0.c`` in nested dicts/lists, creating dicts on the way."""
    parts = dotted.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise KdzooError(f"'{dotted}': '{part}' is not an index of a list of {len(node)}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if not isinstance(node.get(part), (dict, list)):
                    node[part] = {}
                node = node[part]
        else:
            raise KdzooError(f"'{dotted}': cannot set '{part}' inside a {type(node).__name__}")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``--set key.path=value`` (value parsed as YAML: numbers, lists, booleans)."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise KdzooError(f"--set expects key.path=value, got '{item}'")
        set_path(data, key.strip(), yaml.safe_load(raw))
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
    return spec


def _inherit_teacher_defaults(spec: DistillSpec) -> None:
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


def expand_matrix(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """One spec with ``matrix:`` -> [(arm name, spec dict)] over the product of its values."""
    matrix = data.get("matrix")
    base = {k: v for k, v in data.items() if k != "matrix"}
    if not matrix:
        return [(data.get("name") or "run", base)]
    if not isinstance(matrix, dict):
        return [(data.get("name") or "run", data)]  # validation reports the bad matrix
    paths = list(matrix)
    arms = []
    for values in itertools.product(*(matrix[p] if isinstance(matrix[p], list) else [matrix[p]] for p in paths)):
        arm = copy.deepcopy(base)
        for path, value in zip(paths, values):
            set_path(arm, path, copy.deepcopy(value))
        arm_name = "_".join(_slug(p, v) for p, v in zip(paths, values))
        arm_name = arm_name if arm_name[:1].isalpha() else f"arm-{arm_name}"
        arm["name"] = arm_name
        arms.append((arm_name, arm))
    return arms


def _slug(path: str, value: Any) -> str:
    """Short readable arm-name part for one matrix value."""
    leaf = path.split(".")[-1]
    if isinstance(value, dict) and "name" in value:
        text = str(value["name"])
    elif isinstance(value, list) and all(isinstance(v, dict) and "name" in v for v in value):
        text = "-".join(str(v["name"]) for v in value)
    elif isinstance(value, (dict, list)):
        text = f"{len(value)}"
    else:
        text = f"{leaf}{value}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
    return re.sub(r"[^A-Za-z0-9.-]", "-", text.replace("e+", "e"))  # 1e+30 -> 1e30, not 1e-30


def load_spec(
    path: str | Path, registry: Registry | None, overrides: list[str] | None = None
) -> tuple[dict[str, Any], list[tuple[str, AnySpec]]]:
    """Read, override, expand and validate a spec file.

    Returns the raw (overridden) dict and the validated runs: one for a plain spec,
    one per arm for a spec with ``matrix:``. Every arm is validated before any runs.
    """
    data = apply_overrides(read_spec_file(path), overrides or [])
    resolve_plugin_paths(data, Path(path).resolve().parent, str(path))
    arms = expand_matrix(data)
    problems: list[str] = []
    runs: list[tuple[str, AnySpec]] = []
    if data.get("matrix") is not None:
        try:  # the matrix itself (types), without expanding
            RunSpec.model_validate({"matrix": data["matrix"]})
        except ValidationError as exc:
            raise SpecError(str(path), [describe_error(err, prefix="") for err in exc.errors()]) from None
    for arm_name, arm in arms:
        try:
            runs.append((arm_name, validate_spec(arm, registry, str(path))))
        except SpecError as exc:
            label = f"[matrix arm {arm_name}] " if data.get("matrix") else ""
            problems.extend(label + p for p in exc.problems)
    if problems:
        raise SpecError(str(path), list(dict.fromkeys(problems)))
    return data, runs


def json_schema() -> dict[str, Any]:
    """JSON schema of both run kinds (docs/spec.md is generated from it)."""
    return {kind: model.model_json_schema() for kind, model in SPEC_KINDS.items()}
