"""Renders docs/api.md from the public API's docstrings and signatures, so the plugin
API reference cannot drift from the code.

Regenerate with ``python -m kdzoo.authoring.apidoc > docs/api.md`` (a test checks it is
current). The page covers every name in ``kdzoo.api.__all__`` (kind, signature,
docstring; for classes their fields, constructor arguments, class attributes and public
methods), every hook of :mod:`kdzoo.host.hookspecs` (signature, docstring, the factory
call of its kind) and the ``register`` callable the component hooks receive. It never
loads plugins: the output depends only on the kdzoo source.

Conventions the renderer reads (and ``tests/test_docs_api.py`` enforces):

- a dataclass field, a constructor argument or a class attribute is described by a
  bullet ``- ``name``: text`` in its class docstring (continued on lines indented by
  two more spaces); the renderer moves those bullets into the class's table;
- a constant (or type alias) is described by the comment at its assignment: a
  trailing ``# ...`` on the same line, else the ``#`` / ``#:`` lines right above it,
  else the trailing comment of its line in ``kdzoo.api._EXPORTS``.

The modules: :mod:`~kdzoo.authoring.apidoc.describe` finds the descriptions (docstring
bullets, source comments, where a name is defined), :mod:`~kdzoo.authoring.apidoc.hooks`
reads the hookspecs, :mod:`~kdzoo.authoring.apidoc.markdown` formats text and
signatures, :mod:`~kdzoo.authoring.apidoc.render` renders the sections; this module
puts the page together in order.
"""

from __future__ import annotations

import importlib
import re

import kdzoo.api as api
from kdzoo.authoring.apidoc.describe import DEFINED_IN, defining_module, docstring
from kdzoo.authoring.apidoc.markdown import to_markdown
from kdzoo.authoring.apidoc.render import render_hooks, render_name

REGENERATE = "python -m kdzoo.authoring.apidoc > docs/api.md"

INTRO = """# Plugin API reference

Everything a kdzoo plugin may import is in one namespace, `kdzoo.api`, plus the hooks
of `kdzoo.host.hookspecs` that a plugin implements. The tutorial with worked examples
of each component kind is [plugins.md](plugins.md); the hooks in prose are in
[hooks.md](hooks.md).

This page is generated from the code (`{regenerate}`); a test fails when it is stale.
""".format(regenerate=REGENERATE)


def sections() -> list[tuple[str, list[str]]]:
    """``(module, public names)``: ``kdzoo`` first (the names it re-exports), then the
    defining modules in the order of ``kdzoo.api._EXPORTS``."""
    order: dict[str, list[str]] = {"kdzoo": []}
    for name in api._EXPORTS:
        order.setdefault(api._EXPORTS[name], [])
    public = set(api.__all__)
    for name in [*DEFINED_IN, *api._EXPORTS, *api.__all__]:
        if name in public:
            public.discard(name)
            section = "kdzoo" if name in DEFINED_IN else defining_module(name)
            order.setdefault(section, []).append(name)
    return [(module, names) for module, names in order.items() if names]


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def render() -> str:
    """The whole of docs/api.md: intro, ``kdzoo.api``'s docstring, contents, the hooks,
    then one section per defining module with its public names."""
    blocks: list[str] = [INTRO.strip()]
    blocks.append("## `kdzoo.api`\n\n" + to_markdown(docstring(api)))
    contents = ["- [Hooks](#hooks-kdzoohosthookspecs)"]
    for module, names in sections():
        contents.append(f"- [`{module}`](#{_anchor(module)}): " + ", ".join(f"[`{n}`](#{_anchor(n)})" for n in names))
    blocks.append("Contents:\n\n" + "\n".join(contents))
    blocks += render_hooks()
    for module_name, names in sections():
        module = importlib.import_module(module_name)
        blocks.append(f"## `{module_name}`")
        doc = docstring(module)
        if doc:
            blocks.append(to_markdown(doc))
        for name in names:
            blocks += render_name(name)
    return "\n\n".join(block.strip("\n") for block in blocks if block.strip()) + "\n"
