"""registry.yaml: its schema, and its component lists in step with what the plugins in
this repository really register (a plugin that adds or renames a component must update
the catalogue, or this fails and says how)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from kdzoo.authoring.catalogue import CATALOGUE_FILE, is_local_requirement, load_catalogue, normalise
from kdzoo.errors import KdzooError
from kdzoo.host.hookspecs import KINDS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PLUGIN = ROOT / "examples" / "kdzoo-example-plugin"


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue(ROOT / CATALOGUE_FILE)


def registered_by(host, plugin: str) -> dict[str, list[str]]:
    kinds = {kind: sorted(c.name for c in host.registry.by_kind(kind) if c.plugin == plugin) for kind in KINDS}
    return {kind: names for kind, names in kinds.items() if names}


def out_of_step(entry, registered: dict[str, list[str]]) -> str:
    expected = yaml.safe_dump({"kinds": registered}, default_flow_style=None, sort_keys=False)
    return f"registry.yaml lists for {entry.name}: {entry.kinds}\nit registers: {registered}\nupdate its entry to:\n{expected}"


def test_the_catalogue_is_the_default_and_schema_valid(catalogue):
    assert load_catalogue().names() == catalogue.names()
    assert catalogue.base_dir == ROOT


def test_every_builtin_plugin_folder_is_listed_as_builtin(catalogue):
    folders = {p.parent.name for p in (ROOT / "plugins").glob("*/pyproject.toml")}
    builtins = {entry.name for entry in catalogue.plugins if entry.builtin}
    assert builtins == folders
    assert all(entry.pip == f"plugins/{entry.name}" for entry in catalogue.plugins if entry.builtin)


def test_local_requirements_point_at_package_folders(catalogue):
    for entry in catalogue.plugins:
        if is_local_requirement(entry.pip):
            assert (Path(entry.requirement(catalogue.base_dir)) / "pyproject.toml").is_file(), entry.name


def test_builtin_entries_list_exactly_what_the_plugins_register(catalogue, host):
    by_distribution = {normalise(info.distribution): name for name, info in host.plugins.items() if info.distribution}
    for entry in (e for e in catalogue.plugins if e.builtin):
        plugin = by_distribution.get(normalise(entry.name))
        assert plugin is not None, f"{entry.name} is not installed or failed to load: {host.registry.failures}"
        registered = registered_by(host, plugin)
        assert entry.kinds == registered, out_of_step(entry, registered)


def test_the_example_plugin_entry_lists_what_it_registers(catalogue, monkeypatch):
    from kdzoo.testing import isolated_host

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))
    try:
        host = isolated_host("kdzoo_example")
    finally:
        sys.modules.pop("kdzoo_example", None)
    entry = catalogue.get("kdzoo-example-plugin")
    registered = registered_by(host, "kdzoo_example")
    assert entry.kinds == registered, out_of_step(entry, registered)
    assert tomllib.loads((EXAMPLE_PLUGIN / "pyproject.toml").read_text())["project"]["name"] == entry.name


VALID_ENTRY = {"name": "kdzoo-foo", "pip": "kdzoo-foo", "summary": "foo", "kinds": {"loss": ["foo"]}}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"colour": "red"}, "plugins[0] (kdzoo-foo).colour: Extra inputs are not permitted"),
        ({"kinds": {"losses": ["foo"]}}, "plugins[0] (kdzoo-foo).kinds.losses.[key]: Input should be 'model', 'dataset', 'augmentation', 'loss' or 'metric'"),
        ({"kinds": {"loss": ["foo", "foo"]}}, "loss: names repeat: foo"),
        ({"summary": ""}, "plugins[0] (kdzoo-foo).summary: String should have at least 1 character"),
        ({"min_kdzoo": "one"}, "plugins[0] (kdzoo-foo).min_kdzoo: String should match pattern"),
        ({"homepage": "example.org"}, "plugins[0] (kdzoo-foo).homepage: String should match pattern"),
        ({"builtin": True}, "builtin plugin 'kdzoo-foo' must be installed from its folder, plugins/<name>"),
        ({"name": "kdzoo foo"}, "plugins[0] (kdzoo foo).name: String should match pattern"),
    ],
)
def test_schema_errors_name_the_entry_and_field(tmp_path, change, message):
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "plugins": [{**VALID_ENTRY, **change}]}))
    with pytest.raises(KdzooError) as caught:
        load_catalogue(path)
    assert message in str(caught.value)


def test_a_plugin_listed_twice_is_an_error(tmp_path):
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump({"plugins": [VALID_ENTRY, {**VALID_ENTRY, "name": "Kdzoo_Foo"}]}))
    with pytest.raises(KdzooError, match="plugins listed twice: kdzoo-foo"):
        load_catalogue(path)


def test_names_are_found_normalised_and_misspellings_get_a_did_you_mean(catalogue):
    assert catalogue.get("Kdzoo_Feature.Losses").name == "kdzoo-feature-losses"
    with pytest.raises(KdzooError, match="did you mean 'kdzoo-feature-losses'"):
        catalogue.get("kdzoo-feature-loses")
