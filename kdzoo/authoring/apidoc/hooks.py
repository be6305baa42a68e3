"""What the page says about the hooks of :mod:`kdzoo.host.hookspecs`: the hookspecs in
source order, how docs name them, the factory call of each component kind, and the
``register`` callable the component hooks receive."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

from kdzoo.authoring.apidoc.markdown import BORDER, format_signature
from kdzoo.host import hookspecs


def hookspec_functions() -> list[Callable[..., Any]]:
    """The hookspecs of :mod:`kdzoo.host.hookspecs`, in source order."""
    marker = f"{hookspecs.PROJECT}_spec"
    found = [f for f in vars(hookspecs).values() if inspect.isfunction(f) and hasattr(f, marker)]
    return sorted(found, key=lambda f: f.__code__.co_firstlineno)


def hook_heading(function: Callable[..., Any]) -> str:
    """``register_models(register)``: how docs name a hook."""
    return f"{function.__name__}({', '.join(inspect.signature(function).parameters)})"


def factory_contexts() -> dict[str, tuple[str, str]]:
    """kind -> (context keywords, return type), from the table in the hookspecs docstring."""
    lines = (hookspecs.__doc__ or "").splitlines()
    borders = [i for i, line in enumerate(lines) if BORDER.match(line)]
    if len(borders) < 3:
        return {}
    starts = [m.start() for m in re.finditer(r"=+", lines[borders[0]])]
    table: dict[str, tuple[str, str]] = {}
    for line in lines[borders[1] + 1 : borders[2]]:
        if not line.strip():
            continue
        kind, context, returns = (line[a:b].strip() for a, b in zip(starts, [*starts[1:], None]))
        table[kind] = (context, returns)
    return table


def factory_call(kind: str) -> str:
    """``factory(params, *, num_classes, image_size)``: how the host calls a factory of ``kind``."""
    context, _ = factory_contexts()[kind]
    keywords = [k.strip() for k in context.split(",") if k.strip() and not k.strip().startswith("(")]
    return "factory(params" + (", *, " + ", ".join(keywords) if keywords else "") + ")"


def _register() -> Callable[..., Any]:
    from kdzoo.host.registry import Registry, make_register

    return make_register(Registry(), hookspecs.KINDS[0], "doc")


def register_signature() -> str:
    """The signature of the ``register`` callable a component hook receives."""
    return format_signature(_register())


def register_parameters() -> list[str]:
    """The argument names of the ``register`` callable a component hook receives."""
    return list(inspect.signature(_register()).parameters)
