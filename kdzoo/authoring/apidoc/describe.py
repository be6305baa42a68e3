"""Where the page's descriptions come from: the ``- ``name``: text`` bullets of class
docstrings (fields, constructor arguments, class attributes), the comments at the
assignments of constants, and what each public name is and where it is defined."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import io
import re
import tokenize
import typing
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import kdzoo.api as api

#: Public names that ``kdzoo.api._EXPORTS`` does not list: where each is defined.
DEFINED_IN = {"PLUGIN_API_VERSION": "kdzoo", "hookimpl": "kdzoo.host.hookspecs"}

_BULLET = re.compile(r"^- ``([A-Za-z_]\w*)``: (.*)$")


# ----------------------------------------------------------------------------- docstrings
def docstring(obj: Any) -> str:
    """The cleaned docstring of a class, module or callable; ``""`` for anything else."""
    doc = obj.__doc__ if isinstance(obj, (type, ModuleType)) or callable(obj) else None
    return inspect.cleandoc(doc) if doc else ""


def split_bullets(doc: str, marker: str | None = None) -> tuple[str, dict[str, str]]:
    """``doc`` without its ``- ``name``: text`` bullets (replaced by the line ``marker``
    where the first of them was, when given), and the bullets by name."""
    kept: list[str] = []
    bullets: dict[str, str] = {}
    current: str | None = None
    for line in doc.splitlines():
        match = _BULLET.match(line)
        if match:
            if marker is not None and not bullets:
                kept.append(marker)
            current = match.group(1)
            bullets[current] = match.group(2).strip()
            continue
        if current is not None and line.startswith("  ") and line.strip():
            bullets[current] += " " + line.strip()
            continue
        current = None
        kept.append(line)
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
    return text, bullets


# ----------------------------------------------------------------------------- source comments
def _comments(source: str) -> dict[int, str]:
    """Line number -> the comment on that line."""
    found: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found[token.start[0]] = token.string
    return found


def _clean_comment(comment: str) -> str:
    return comment.lstrip("#").lstrip(":").strip()


@dataclasses.dataclass(frozen=True)
class Assignment:
    """A module-level assignment of a public constant: its source and its comment."""

    module: str
    source: str
    comment: str


def find_assignment(module_name: str, name: str) -> Assignment | None:
    """The module-level assignment of ``name`` in ``module_name`` and its comment: the
    trailing comment, else the comment lines right above, else its ``_EXPORTS`` comment."""
    module = importlib.import_module(module_name)
    source = inspect.getsource(module)
    comments = _comments(source)
    lines = source.splitlines()
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if not any(isinstance(t, ast.Name) and t.id == name for t in targets):
            continue
        segment = ast.get_source_segment(source, node) or name
        comment = _clean_comment(comments[node.lineno]) if node.lineno in comments else ""
        if not comment:
            above: list[str] = []
            row = node.lineno - 1
            while row >= 1 and lines[row - 1].lstrip().startswith("#"):
                above.insert(0, _clean_comment(lines[row - 1].strip()))
                row -= 1
            comment = " ".join(above)
        if not comment:
            comment = _exports_comment(name)
        return Assignment(module_name, segment, comment)
    return None


def _exports_comment(name: str) -> str:
    """The trailing comment of ``name``'s line in ``kdzoo.api._EXPORTS``."""
    source = inspect.getsource(api)
    comments = _comments(source)
    for number, line in enumerate(source.splitlines(), 1):
        if line.strip().startswith(f'"{name}":') and number in comments:
            return _clean_comment(comments[number])
    return ""


# ----------------------------------------------------------------------------- public names
def defining_module(name: str) -> str:
    """The module whose source defines public name ``name``."""
    if name in api._EXPORTS:
        return api._EXPORTS[name]
    if name in DEFINED_IN:
        return DEFINED_IN[name]
    raise KeyError(
        f"kdzoo.api.__all__ names '{name}', but kdzoo/authoring/apidoc/describe.py does not know where it is defined: add it to DEFINED_IN"
    )


def kind_of(obj: Any) -> str:
    """What the page calls a public object: dataclass, protocol class, function, constant, ..."""
    if inspect.isclass(obj):
        if issubclass(obj, BaseException):
            return "exception class"
        if dataclasses.is_dataclass(obj):
            return "dataclass"
        if getattr(obj, "_is_protocol", False):
            return "protocol class"
        return "class"
    if inspect.isfunction(obj):
        return "function"
    if typing.get_origin(obj) is not None:
        return "type alias"
    if callable(obj):
        return "decorator"
    return "constant"


# ----------------------------------------------------------------------------- class members
def own_init(cls: type) -> Callable[..., Any] | None:
    """The class's own ``__init__`` (also a dataclass's generated one), else None."""
    init = cls.__dict__.get("__init__")
    if not inspect.isfunction(init) or not init.__qualname__.startswith(cls.__qualname__ + "."):
        return None
    return init


def class_variables(cls: type) -> dict[str, str]:
    """``ClassVar`` attributes declared by the class itself: name -> annotation."""
    annotations = cls.__dict__.get("__annotations__", {})
    return {name: str(a) for name, a in annotations.items() if "ClassVar" in str(a) and not name.startswith("_")}


def described_members(cls: type) -> dict[str, list[str]]:
    """What must be described in the class docstring: fields, constructor arguments, class variables."""
    wanted: dict[str, list[str]] = {}
    if dataclasses.is_dataclass(cls):
        wanted["fields"] = [f.name for f in dataclasses.fields(cls)]
    elif own_init(cls) is not None:
        wanted["arguments"] = [p for p in inspect.signature(cls).parameters]
    if class_variables(cls):
        wanted["class attributes"] = list(class_variables(cls))
    return wanted


def missing_descriptions() -> list[str]:
    """``Class.member`` for every field / argument / class attribute without a bullet."""
    missing = []
    for name in api.__all__:
        obj = getattr(api, name)
        if not inspect.isclass(obj):
            continue
        _, bullets = split_bullets(docstring(obj))
        for members in described_members(obj).values():
            missing += [f"{name}.{member}" for member in members if member not in bullets]
    return missing


def public_methods(cls: type) -> Iterator[tuple[str, Any]]:
    """The methods and properties the class itself defines (``__call__`` included), in source order."""
    for attr, value in cls.__dict__.items():
        if attr.startswith("_") and attr != "__call__":
            continue
        function = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
        if isinstance(value, property) or inspect.isfunction(function):
            yield attr, value
