"""The plugin API reference (docs/api.md) is current, and every hook and public name is documented.

In the style of datasette's ``test_plugin_hooks_are_documented``: a hook or a public
name added to the code without documentation fails here.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

import kdzoo.api as api
from kdzoo.authoring import apidoc
from kdzoo.authoring.apidoc import describe, hooks, markdown
from kdzoo.host import hookspecs

DOCS = Path(__file__).parent.parent / "docs"
API_MD = DOCS / "api.md"
HOOKS_MD = DOCS / "hooks.md"


@pytest.fixture(scope="module")
def rendered() -> str:
    return apidoc.render()


@pytest.fixture(scope="module")
def api_md() -> str:
    return API_MD.read_text()


def _headings(text: str) -> set[str]:
    return {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")}


def test_docs_api_reference_is_current(rendered, api_md):
    assert api_md == rendered, f"docs/api.md is stale: {apidoc.REGENERATE}"


def test_render_is_deterministic(rendered):
    assert apidoc.render() == rendered


# ----------------------------------------------------------------------------- hooks
HOOKS = hooks.hookspec_functions()


def test_every_hookspec_is_found():
    names = {f.__name__ for f in HOOKS}
    assert set(hookspecs.COMPONENT_HOOKS) <= names
    assert "register_commands" in names


@pytest.mark.parametrize("hook", HOOKS, ids=lambda f: f.__name__)
def test_plugin_hooks_are_documented(hook, api_md):
    heading = f"`{hooks.hook_heading(hook)}`"
    assert heading in _headings(HOOKS_MD.read_text()), f"docs/hooks.md has no heading {heading}"
    assert heading in _headings(api_md), f"docs/api.md has no heading {heading}"
    assert inspect.getdoc(hook), f"hookspec {hook.__name__} has no docstring"


def test_every_component_kind_has_a_factory_call():
    contexts = hooks.factory_contexts()
    assert set(contexts) == set(hookspecs.KINDS), "the factory table in kdzoo/host/hookspecs.py's docstring must list every kind"
    assert hooks.factory_call("model") == "factory(params, *, num_classes, image_size)"
    assert hooks.factory_call("loss") == "factory(params)"
    hooks_md = HOOKS_MD.read_text()
    for hook, kind in hookspecs.COMPONENT_HOOKS.items():
        row = next((line for line in hooks_md.splitlines() if line.startswith(f"| `{hook}` |")), None)
        assert row is not None, f"docs/hooks.md's factory table has no row for {hook}"
        assert f"`{hooks.factory_call(kind)}`" in row, f"docs/hooks.md: {hook} is called as {hooks.factory_call(kind)}"


def test_every_register_argument_is_described(api_md):
    _, bullets = describe.split_bullets(inspect.cleandoc(hookspecs.__doc__))
    hooks_md = HOOKS_MD.read_text()
    for name in hooks.register_parameters():
        assert name in bullets, f"kdzoo/host/hookspecs.py's docstring does not describe register's '{name}' argument"
        assert f"- `{name}`:" in hooks_md, f"docs/hooks.md does not describe register's '{name}' argument"
        assert f"| `{name}` |" in api_md


def test_hooks_md_links_the_api_reference():
    assert "(api.md)" in HOOKS_MD.read_text()


# ----------------------------------------------------------------------------- public names
PUBLIC = sorted(api.__all__)


def test_every_public_name_has_a_known_home():
    for name in PUBLIC:
        module = describe.defining_module(name)
        assert module.startswith("kdzoo")


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_is_documented(name, api_md):
    obj = getattr(api, name)
    kind = describe.kind_of(obj)
    assert f"`{name}`" in _headings(api_md), f"docs/api.md has no section for kdzoo.api.{name}"
    if kind in ("constant", "type alias", "decorator"):
        found = describe.find_assignment(describe.defining_module(name), name)
        assert found is not None, f"no module-level assignment of {name} in {describe.defining_module(name)}"
        assert found.comment, f"{name} needs a comment at its assignment (or on its line of kdzoo.api._EXPORTS)"
    else:
        assert inspect.getdoc(obj), f"kdzoo.api.{name} has no docstring"


@pytest.mark.parametrize("name", [n for n in PUBLIC if inspect.isclass(getattr(api, n))])
def test_public_methods_have_docstrings(name):
    cls = getattr(api, name)
    for attr, value in describe.public_methods(cls):
        function = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
        assert function is not None and function.__doc__, f"kdzoo.api.{name}.{attr} has no docstring"


def test_every_field_argument_and_class_attribute_is_described():
    assert describe.missing_descriptions() == []


@pytest.mark.parametrize(
    "name, members",
    [
        ("EvalBatch", None),
        ("DistillBatch", None),
        ("SetupContext", None),
        ("ModelOutputs", None),
        ("ImageData", None),
        ("CamHead", None),
        ("Network", None),
    ],
)
def test_core_types_are_described_member_by_member(name, members, api_md):
    cls = getattr(api, name)
    wanted = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else list(inspect.signature(cls).parameters)
    _, bullets = describe.split_bullets(inspect.getdoc(cls))
    section = api_md.split(f"### `{name}`", 1)[1].split("\n### ", 1)[0]
    for member in wanted:
        assert bullets.get(member), f"{name}.{member} is not described in the {name} docstring"
        row = next((line for line in section.splitlines() if line.startswith(f"| `{member}` |")), "")
        assert row and "**undocumented**" not in row, f"docs/api.md: no description of {name}.{member}"


def test_module_docstrings_of_connectors_and_keys_are_rendered(api_md):
    from kdzoo.api import connectors, keys

    for module in (connectors, keys):
        assert f"## `{module.__name__}`" in api_md
        first = inspect.getdoc(module).splitlines()[0]
        assert markdown.to_markdown(first) in api_md


def test_to_markdown_converts_rst_literals_and_tables():
    text = "A ``code`` and :func:`kdzoo.api.role_key`::\n\n    x = 1\n\nafter\n\n====  ====\na     b\n====  ====\n1     2\n====  ===="
    out = markdown.to_markdown(text)
    assert "`code`" in out and "`kdzoo.api.role_key`:" in out
    assert "```\nx = 1\n```" in out
    assert "| a | b |" in out and "| 1 | 2 |" in out


def test_render_does_not_depend_on_installed_plugins(monkeypatch, rendered):
    monkeypatch.setenv("KDZOO_LOAD_PLUGINS", "none-at-all")
    assert apidoc.render() == rendered
    assert not re.search(r"kdzoo_(models|losses|metrics|data|feature_losses)\b", rendered)
