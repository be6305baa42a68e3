"""Which params each component is smoke-run with: its defaults, the ``examples`` it
declared, and ``--params NAME.KEY=VALUE`` options (VALUE read as YAML)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from kdzoo.errors import KdzooError, did_you_mean
from kdzoo.host.registry import Component

PARAMS_HINT = "expected NAME.KEY=VALUE with NAME a component of the plugin, e.g. --params kd.temperature=4"


@dataclass(frozen=True)
class ParamsOption:
    text: str  # as given, for messages
    path: str  # NAME.KEY (a NAME may itself hold dots; a KEY path a.b sets a nested field)
    value: Any


def parse_params_options(options: Iterable[str] | Mapping[str, Mapping[str, Any]]) -> list[ParamsOption]:
    """``--params`` options (or ``{component name: params}``), checked for syntax only:
    which component they name is known once the plugin has registered."""
    if isinstance(options, Mapping):
        return [
            ParamsOption(f"{name}.{key}={value!r}", f"{name}.{key}", value)
            for name, params in options.items()
            for key, value in dict(params).items()
        ]
    parsed = []
    for text in options:
        path, sep, raw = text.partition("=")
        path = path.strip()
        if not sep or "." not in path.strip(".") or path.startswith(".") or path.endswith("."):
            raise KdzooError(f"--params {text!r}: {PARAMS_HINT}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise KdzooError(f"--params {text!r}: the value is not valid YAML: {' '.join(str(exc).split())}") from None
        parsed.append(ParamsOption(text, path, value))
    return parsed


def assign_params_options(
    options: list[ParamsOption], components: list[Component], attempted: set[str], where: str
) -> dict[str, dict[str, Any]]:
    """Component name -> the params its options set, validated by its params model.

    ``attempted`` are names the plugin tried to register; options for one that was
    refused are dropped (the report says why it was refused). Raises KdzooError.
    """
    names = {c.name for c in components}
    requested: dict[str, dict[str, Any]] = {}
    for option in options:
        name = max((n for n in names | attempted if option.path.startswith(n + ".")), key=len, default=None)
        if name is None:
            first = option.path.split(".")[0]
            raise KdzooError(
                f"--params {option.text}: {where} registers no component named '{first}'{did_you_mean(first, names)}; "
                f"its components: {', '.join(sorted(names)) or 'none'}"
            )
        target = requested.setdefault(name, {})
        *parents, key = option.path[len(name) + 1 :].split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise KdzooError(f"--params {option.text}: '{parent}' is set to a value and to fields at once")
        target[key] = option.value
    for component in components:
        if component.name not in requested:
            continue
        try:
            component.params.model_validate(requested[component.name])
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join([component.params.__name__, *map(str, e['loc'])])}: {e['msg']} (given {e.get('input')!r})"
                for e in exc.errors()
            )
            raise KdzooError(f"--params for {component.kind} '{component.name}' (plugin '{component.plugin}'): {problems}") from None
    return {name: params for name, params in requested.items() if name in names}


def show_params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items()) or "no params"


def declared_examples(component: Component) -> list[dict[str, Any]]:
    """``register(..., examples=[...])`` and an ``examples`` class attribute of the params model."""
    examples = [dict(e) for e in component.examples]
    extra = getattr(component.params, "examples", ())
    if isinstance(extra, (list, tuple)):
        examples += [dict(e) for e in extra if isinstance(e, Mapping) and dict(e) not in examples]
    return examples


def variants(component: Component, requested: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, dict[str, Any] | None]]:
    """(subject suffix, params) of each smoke run: the defaults first."""
    runs: list[tuple[str, dict[str, Any] | None]] = [("", None)]
    runs += [(f" with {show_params(example)}", example) for example in declared_examples(component)]
    if component.name in requested:
        runs.append((f" with {show_params(requested[component.name])} (--params)", dict(requested[component.name])))
    return runs
