"""``matrix:``: one spec expanded into the product of its values, one named arm each.

``matrix: {variants: [...]}`` is the one key that is not a path: each of its values is a
mapping of dotted paths set together in one arm (an optional ``name`` names that part of
the arm), for arms that differ in several fields at once (a method with its own stages
or optimizer). It multiplies with the other keys like any entry.

Arm names are directory names and must be unique: arms whose short names collide
(e.g. two ``kd`` losses that differ only in params) are named from the values that
differ. A grid larger than ``KDZOO_MAX_ARMS`` (default 10,000) is refused with its size
before anything is expanded.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import re
from collections import Counter
from typing import Any

from kdzoo.errors import KdzooError, SpecError
from kdzoo.spec.paths import set_path

MAX_ARMS_ENV = "KDZOO_MAX_ARMS"
#: The matrix key whose values are {dotted path: value} mappings applied together.
VARIANTS = "variants"
DEFAULT_MAX_ARMS = 10_000


def max_arms_allowed() -> int:
    raw = os.environ.get(MAX_ARMS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_ARMS
    if not raw.isdigit() or int(raw) < 1:
        raise KdzooError(f"{MAX_ARMS_ENV} must be a positive whole number of arms, got {raw!r}")
    return int(raw)


def _values(entry: Any) -> list[Any]:
    return entry if isinstance(entry, list) else [entry]


def expand_matrix(data: dict[str, Any], source: str = "spec") -> list[tuple[str, dict[str, Any]]]:
    """One spec with ``matrix:`` -> [(arm name, spec dict)] over the product of its values."""
    matrix = data.get("matrix")
    base = {k: v for k, v in data.items() if k != "matrix"}
    if not matrix:
        return [(data.get("name") or "run", base)]
    if not isinstance(matrix, dict):
        return [(data.get("name") or "run", data)]  # validation reports the bad matrix
    paths = list(matrix)
    bad_variants = [v for v in _values(matrix.get(VARIANTS, [])) if not isinstance(v, dict) or not set(v) - {"name"}]
    if bad_variants:
        raise SpecError(source, [f"matrix.{VARIANTS}: each value must be a mapping of dotted paths to the values one arm "
                                 f"sets together (and an optional name), got {bad_variants[0]!r}"])
    count = math.prod(len(_values(matrix[p])) for p in paths)
    limit = max_arms_allowed()
    if count > limit:
        sizes = " x ".join(f"{len(_values(matrix[p]))} ({p})" for p in paths)
        raise SpecError(source, [f"matrix: {count:,} arms ({sizes}) is more than the limit of {limit:,}; "
                                 f"narrow the matrix or raise {MAX_ARMS_ENV}"])
    combos = list(itertools.product(*(_values(matrix[p]) for p in paths)))
    names = unique_arm_names(paths, combos)
    arms = []
    for arm_name, values in zip(names, combos):
        arm = copy.deepcopy(base)
        for path, value in zip(paths, values):
            for field, field_value in _assignments(path, value):
                set_path(arm, field, copy.deepcopy(field_value))
        arm["name"] = arm_name
        arms.append((arm_name, arm))
    return arms


def _assignments(path: str, value: Any) -> list[tuple[str, Any]]:
    """The (dotted path, value) pairs one matrix value sets: one, or a variant's several."""
    if path != VARIANTS:
        return [(path, value)]
    return [(field, field_value) for field, field_value in value.items() if field != "name"]


def unique_arm_names(paths: list[str], combos: list[tuple[Any, ...]]) -> list[str]:
    """Short names; where two collide, the colliding ones spell out their values in full
    (component params included); a collision left after that gets a numeric suffix."""
    names = [_arm_name(paths, values, verbose=False) for values in combos]
    short = Counter(names)
    names = [_arm_name(paths, values, verbose=True) if short[name] > 1 else name for name, values in zip(names, combos)]
    full = Counter(names)
    seen: Counter[str] = Counter()
    for i, name in enumerate(names):
        if full[name] > 1:  # every member of a group still colliding gets a suffix
            seen[name] += 1
            names[i] = f"{name}-{seen[name]}"
    return names


def _arm_name(paths: list[str], values: tuple[Any, ...], verbose: bool) -> str:
    name = "_".join(_slug(p, v, verbose) for p, v in zip(paths, values))
    return name if name[:1].isalpha() else f"arm-{name}"


def _component_slug(value: dict[str, Any], verbose: bool) -> str:
    text = str(value["name"])
    params = value.get("params") or {}
    if verbose:
        text += "".join(f"-{k}{_scalar(v)}" for k, v in sorted(params.items()))
        if "weight" in value:
            text += f"-w{_scalar(value['weight'])}"
    return text


def _scalar(value: Any) -> str:
    return "-".join(map(str, value)) if isinstance(value, list) else str(value)


def _slug(path: str, value: Any, verbose: bool = False) -> str:
    """Short readable arm-name part for one matrix value."""
    leaf = path.split(".")[-1]
    if path == VARIANTS and isinstance(value, dict):
        if not verbose and "name" in value:
            text = str(value["name"])
        else:
            text = "_".join(_slug(field, field_value, verbose) for field, field_value in value.items() if field != "name")
            text = f"{value['name']}_{text}" if "name" in value else text
    elif isinstance(value, dict) and "name" in value:
        text = _component_slug(value, verbose)
    elif isinstance(value, list) and all(isinstance(v, dict) and "name" in v for v in value):
        text = "-".join(_component_slug(v, verbose) for v in value)
    elif isinstance(value, (dict, list)):
        text = "-".join(f"{k}{_scalar(v)}" for k, v in sorted(value.items())) if verbose and isinstance(value, dict) else f"{len(value)}"
    else:
        text = f"{leaf}{value}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
    return re.sub(r"[^A-Za-z0-9.-]", "-", text.replace("e+", "e"))  # 1e+30 -> 1e30, not 1e-30
