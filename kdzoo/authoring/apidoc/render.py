"""The sections of the page: the hooks, and one section per public name (for a class
its constructor, member tables and public methods)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any

import kdzoo.api as api
from kdzoo.authoring.apidoc.describe import (
    class_variables,
    defining_module,
    docstring,
    find_assignment,
    kind_of,
    own_init,
    public_methods,
    split_bullets,
)
from kdzoo.authoring.apidoc.hooks import factory_call, factory_contexts, hook_heading, hookspec_functions, register_parameters, register_signature
from kdzoo.authoring.apidoc.markdown import annotation_text, cell, code, code_cell, format_signature, to_markdown, wrapped_call
from kdzoo.host import hookspecs


def _base_name(base: type) -> str:
    """``torch.nn.Module`` rather than ``torch.nn.modules.module.Module``: the shortest public path."""
    if base.__module__ == "builtins" or base.__module__.split(".")[0] == "kdzoo":
        return base.__qualname__
    top = base.__module__.split(".")[0]
    for candidate in (top, f"{top}.nn"):
        try:
            if getattr(importlib.import_module(candidate), base.__qualname__, None) is base:
                return f"{candidate}.{base.__qualname__}"
        except ImportError:
            continue
    return f"{base.__module__}.{base.__qualname__}"


# ----------------------------------------------------------------------------- public names
def render_class(name: str, cls: type) -> list[str]:
    """The blocks of a class: header, docstring, constructor, member tables, public methods."""
    out: list[str] = []
    bases = [b for b in cls.__bases__ if b is not object and b.__name__ not in ("Protocol", "Generic")]
    base_text = ", ".join(_base_name(b) for b in bases)
    init = own_init(cls)
    header = f"class {name}" + (f"({base_text})" if base_text else "")
    out.append(code(header))
    text, bullets = split_bullets(docstring(cls))
    if text:
        out.append(to_markdown(text))
    if init is not None:
        signature = format_signature(cls).removesuffix(" -> None")
        out.append("Constructor:\n\n" + code(wrapped_call(name, signature)))
    if dataclasses.is_dataclass(cls):
        out.append("| field | type | default | description |\n|---|---|---|---|")
        rows = []
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = f"`{f.default!r}`"
            elif f.default_factory is not dataclasses.MISSING:
                default = f"`{getattr(f.default_factory, '__name__', 'factory')}()`"
            else:
                default = "**required**"
            rows.append(f"| `{f.name}` | {code_cell(annotation_text(f.type))} | {default} | {cell(bullets.get(f.name, '**undocumented**'))} |")
        out[-1] += "\n" + "\n".join(rows)
    elif init is not None:
        out.append("| argument | type | default | description |\n|---|---|---|---|")
        rows = []
        for param in inspect.signature(cls).parameters.values():
            kind = annotation_text(param.annotation) if param.annotation is not param.empty else ""
            default = "**required**" if param.default is param.empty else f"`{param.default!r}`"
            rows.append(f"| `{param.name}` | {code_cell(kind)} | {default} | {cell(bullets.get(param.name, '**undocumented**'))} |")
        out[-1] += "\n" + "\n".join(rows)
    variables = class_variables(cls)
    if variables:
        rows = [
            f"| `{attr}` | {code_cell(annotation)} | `{cls.__dict__.get(attr)!r}` | {cell(bullets.get(attr, '**undocumented**'))} |"
            for attr, annotation in variables.items()
        ]
        out.append("| class attribute | type | default | description |\n|---|---|---|---|\n" + "\n".join(rows))
    for attr, value in public_methods(cls):
        out += _render_method(name, attr, value)
    return out


def _render_method(name: str, attr: str, value: Any) -> list[str]:
    if isinstance(value, property):
        annotation = value.fget.__annotations__.get("return") if value.fget else None
        head = f"{name}.{attr}" + (f" -> {annotation_text(annotation)}" if annotation else "")
        out = [f"#### `{name}.{attr}` (property)\n\n" + code(head)]
        doc = docstring(value.fget) if value.fget else ""
    else:
        function = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
        drop = not isinstance(value, staticmethod)
        out = [f"#### `{name}.{attr}`\n\n" + code(wrapped_call(f"{name}.{attr}", format_signature(function, drop_first=drop)))]
        doc = docstring(function)
    if doc:
        out.append(to_markdown(doc))
    return out


def render_name(name: str) -> list[str]:
    """The blocks of the public name ``name`` of ``kdzoo.api``: heading, kind, and its definition."""
    obj = getattr(api, name)
    kind = kind_of(obj)
    out = [f"### `{name}`", f"*{kind}*"]
    if inspect.isclass(obj):
        out += render_class(name, obj)
    elif kind == "function":
        out.append(code(wrapped_call(f"def {name}", format_signature(obj))))
        doc = docstring(obj)
        if doc:
            out.append(to_markdown(doc))
    else:  # constants, type aliases, the hookimpl marker: their assignment and comment
        found = find_assignment(defining_module(name), name)
        out.append(code(found.source if found else name))
        if found and found.comment:
            out.append(to_markdown(found.comment))
    return out


# ----------------------------------------------------------------------------- hooks
def render_hooks() -> list[str]:
    """The blocks of the hooks section: the hookspecs docstring with the ``register``
    table where its bullets were, then one block per hookspec."""
    marker = "<register arguments>"
    text, bullets = split_bullets(inspect.cleandoc(hookspecs.__doc__ or ""), marker=marker)
    rows = [f"| `{p}` | {cell(bullets.get(p, '**undocumented**'))} |" for p in register_parameters()]
    register = "\n\n".join([
        code(wrapped_call("register", register_signature())),
        "| argument | description |\n|---|---|\n" + "\n".join(rows),
    ])
    before, _, after = to_markdown(text).partition(marker)
    out = ["## Hooks (`kdzoo.host.hookspecs`)", before.strip(), register, after.strip()]
    for function in hookspec_functions():
        out.append(f"### `{hook_heading(function)}`")
        out.append(code(f"@hookimpl\ndef {function.__name__}{format_signature(function)}: ..."))
        doc = docstring(function)
        if doc:
            out.append(to_markdown(doc))
        kind = hookspecs.COMPONENT_HOOKS.get(function.__name__)
        if kind is not None and kind in factory_contexts():
            _, returns = factory_contexts()[kind]
            out.append(f"| kind | factory call | returns |\n|---|---|---|\n| `{kind}` | `{factory_call(kind)}` | `{returns}` |")
    return out
