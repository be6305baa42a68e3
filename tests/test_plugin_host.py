"""The plugin host: entry points, duplicate names, broken plugins, the allow-list, API versions."""

from __future__ import annotations

import importlib.metadata as md
import sys
import textwrap

import pytest
from pydantic import BaseModel

from kdzoo.host import loading as plugins
from kdzoo.errors import PluginError
from kdzoo.host.registry import Registry, make_register

GOOD = """
from pydantic import BaseModel
from kdzoo import hookimpl

class Params(BaseModel):
    scale: float = 1.0

@hookimpl
def register_losses(register):
    register("{name}", "math:prod", params=Params, description="a test loss")
"""


@pytest.fixture
def fake_entry_points(tmp_path, monkeypatch):
    """Install plugin modules written to tmp_path as entry points of the kdzoo group."""
    monkeypatch.syspath_prepend(str(tmp_path))
    entries: list[md.EntryPoint] = []

    def add(ep_name: str, module_name: str, source: str) -> None:
        (tmp_path / f"{module_name}.py").write_text(textwrap.dedent(source))
        sys.modules.pop(module_name, None)
        entries.append(md.EntryPoint(ep_name, module_name, "kdzoo"))

    monkeypatch.setattr(plugins.md, "entry_points", lambda group: [e for e in entries if e.group == group])
    monkeypatch.delenv(plugins.ALLOW_LIST_ENV, raising=False)
    return add


def test_entry_point_plugins_register_components(fake_entry_points):
    fake_entry_points("alpha", "kdzoo_test_alpha", GOOD.format(name="alpha-loss"))
    host = plugins.load_plugins()
    component = host.registry.get("loss", "alpha-loss")
    assert component.plugin == "alpha" and component.description == "a test loss"
    assert host.registry.failures == {}


def test_duplicate_name_fails_naming_both_plugins(fake_entry_points):
    fake_entry_points("alpha", "kdzoo_test_alpha", GOOD.format(name="same"))
    fake_entry_points("beta", "kdzoo_test_beta", GOOD.format(name="same"))
    host = plugins.load_plugins()
    assert "beta" in host.registry.failures
    message = host.registry.failures["beta"]
    assert "loss 'same' is registered twice" in message and "'alpha'" in message and "'beta'" in message
    assert host.registry.get("loss", "same").plugin == "alpha"


def test_broken_plugin_is_reported_and_others_load(fake_entry_points):
    fake_entry_points("broken", "kdzoo_test_broken", "raise RuntimeError('boom at import')\n")
    fake_entry_points("alpha", "kdzoo_test_alpha", GOOD.format(name="alpha-loss"))
    host = plugins.load_plugins()
    assert "boom at import" in host.registry.failures["broken"] and "'broken'" in host.registry.failures["broken"]
    assert host.registry.names("loss") == ["alpha-loss"]


def test_plugin_failing_midway_leaves_no_partial_components(fake_entry_points):
    fake_entry_points("half", "kdzoo_test_half", GOOD.format(name="first") + "\n@hookimpl\ndef register_metrics(register):\n    raise ValueError('bad metric')\n")
    host = plugins.load_plugins()
    assert "bad metric" in host.registry.failures["half"]
    assert host.registry.names("loss") == []


def test_misspelt_hook_is_refused(fake_entry_points):
    fake_entry_points("typo", "kdzoo_test_typo", "from kdzoo import hookimpl\n@hookimpl\ndef register_loses(register):\n    pass\n")
    host = plugins.load_plugins()
    assert "register_loses" in host.registry.failures["typo"]


def test_allow_list_limits_what_loads(fake_entry_points, monkeypatch):
    fake_entry_points("alpha", "kdzoo_test_alpha", GOOD.format(name="a"))
    fake_entry_points("beta", "kdzoo_test_beta", GOOD.format(name="b"))
    monkeypatch.setenv(plugins.ALLOW_LIST_ENV, "beta")
    host = plugins.load_plugins()
    assert list(host.plugins) == ["beta"] and host.registry.names("loss") == ["b"]


def test_plugin_needing_a_newer_api_is_refused(fake_entry_points):
    fake_entry_points("future", "kdzoo_test_future", "KDZOO_PLUGIN_API = (99, 0)\n" + GOOD.format(name="x"))
    host = plugins.load_plugins()
    assert "needs kdzoo plugin API 99.0" in host.registry.failures["future"]


def test_register_validates_params_models():
    registry = Registry()
    register = make_register(registry, "loss", "tester")

    class NoDefaults(BaseModel):
        temperature: float

    with pytest.raises(PluginError, match="plugin 'tester': loss 'x': params model defaults do not validate"):
        register("x", "math:prod", params=NoDefaults)
    with pytest.raises(PluginError, match="params must be a pydantic BaseModel"):
        register("y", "math:prod", params=dict)
    with pytest.raises(PluginError, match="factory must be a callable"):
        register("z", "not-a-path")


def test_builtin_plugins_are_found_through_entry_points(host):
    assert {"kdzoo-models", "kdzoo-data", "kdzoo-losses", "kdzoo-feature-losses", "kdzoo-metrics"} <= set(host.plugins)
    assert host.registry.failures == {}
    for kind, name in [("model", "cifar-resnet"), ("dataset", "synthetic-shapes"), ("augmentation", "strong"), ("loss", "kd"), ("metric", "fidelity")]:
        assert host.registry.get(kind, name).plugin.startswith("kdzoo-")


def test_plugins_add_cli_commands(fake_entry_points, monkeypatch):
    from click.testing import CliRunner

    from kdzoo import cli as cli_module

    fake_entry_points(
        "greeter",
        "kdzoo_test_greeter",
        "import click\nfrom kdzoo import hookimpl\n\n@hookimpl\ndef register_commands(cli):\n"
        "    @cli.command()\n    def hello():\n        '''Say hello.'''\n        click.echo('hello from a plugin')\n",
    )
    fake_entry_points("broken-cli", "kdzoo_test_broken_cli", "from kdzoo import hookimpl\n\n@hookimpl\ndef register_commands(cli):\n    raise RuntimeError('no')\n")
    monkeypatch.setattr(plugins, "_HOSTS", {(): plugins.load_plugins()})
    monkeypatch.setattr(cli_module.cli, "commands", dict(cli_module.cli.commands))
    cli_module.attach_commands(plugins.get_host().manager)
    result = CliRunner().invoke(cli_module.cli, ["hello"])
    assert result.exit_code == 0 and "hello from a plugin" in result.output
    assert "hello" in CliRunner().invoke(cli_module.cli, ["--help"]).output
