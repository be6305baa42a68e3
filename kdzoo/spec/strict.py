"""The strict base of every spec object: unknown keys, non-finite numbers, absurd strings
and booleans-for-numbers refused; and the registry a validation reads components from."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from kdzoo.host.registry import Registry

MAX_STRING_LENGTH = 4096


def _leaf_types(annotation: Any) -> set[Any]:
    args = typing.get_args(annotation)
    return set().union(*(_leaf_types(a) for a in args)) if args else {annotation}


class StrictModel(BaseModel):
    """Every spec object refuses unknown keys (the error names the allowed ones), infinite
    or NaN numbers, absurdly long strings, and ``true``/``false`` where a number is meant."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False, str_max_length=MAX_STRING_LENGTH)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads True as 1: a `--set epochs=true` would run one epoch.
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            leaves = _leaf_types(cls.model_fields[info.field_name].annotation)
            if bool not in leaves and leaves & {int, float}:
                raise PydanticCustomError("bool_number", "expected a number, got a boolean", {})
        return value


def _registry(info: ValidationInfo) -> Registry | None:
    return (info.context or {}).get("registry")
