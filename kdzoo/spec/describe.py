"""Turning pydantic's validation errors into one line per problem: the field path, the
bad value and what is allowed."""

from __future__ import annotations

import json
import typing
from typing import Any

from pydantic import BaseModel

from kdzoo.errors import did_you_mean


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The spec model class found by following ``loc`` from ``model`` (list indices skipped;
    a union tagged by ``kind``, an inline teacher's spec, follows the tag in ``loc``)."""
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        found, candidates = [], [field.annotation]
        while candidates:
            tp = candidates.pop()
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                found.append(tp)
            else:
                candidates.extend(typing.get_args(tp))
        if not found:
            return None
        tagged = [m for m in found if parts and "kind" in m.model_fields and m.model_fields["kind"].default == parts[0]]
        if tagged:
            parts.pop(0)
        model = (tagged or found)[0]
    return model


INLINE_TAGS = {"train", "distill"}  # pydantic puts an inline teacher's kind in the path: teachers.0.train.distill...


def _without_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(part for i, part in enumerate(loc) if not (i and loc[i - 1] == "train" and part in INLINE_TAGS))


def describe_error(error: dict[str, Any], prefix: str, root: type[BaseModel] | None = None) -> str:
    tagged_loc = tuple(error["loc"])
    error = {**error, "loc": _without_tags(tagged_loc)}
    loc = ".".join(str(part) for part in error["loc"])
    where = ".".join(p for p in (prefix, loc) if p) or "(top level)"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        parent = _model_at(root, tagged_loc[:-1]) if root else None
        allowed = sorted(parent.model_fields) if parent else []
        key = str(error["loc"][-1])
        message = f"unknown key '{key}'{did_you_mean(key, allowed)}" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
        return f"{where}: {message}"
    if error["type"] not in {"unknown_component", "bad_params", "missing"} and "input" in error:
        shown = json.dumps(error["input"], default=str)
        message += f" (got {shown if len(shown) < 80 else shown[:77] + '...'})"
    if error["type"] == "missing":
        message = "required field is missing"
    return f"{where}: {message}"


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out or {prefix: {}}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for index, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}.{index}"))
        return out
    return {prefix: value}


def spec_differences(old: dict[str, Any], new: dict[str, Any], limit: int = 8) -> list[str]:
    """``epochs: 5 -> 10`` lines for the fields where two resolved specs differ."""
    a, b = _flatten(old), _flatten(new)
    lines = [
        f"{key}: {json.dumps(a.get(key, '(absent)'), default=str)} -> {json.dumps(b.get(key, '(absent)'), default=str)}"
        for key in sorted(set(a) | set(b))
        if a.get(key, "(absent)") != b.get(key, "(absent)")
    ]
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])
