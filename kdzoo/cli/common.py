"""What the command modules share: loading plugins with their warnings, common options."""

from __future__ import annotations

from pathlib import Path

import click



def load_host_with_warnings(plugin_files: list[Path] | tuple[Path, ...] = ()):
    """The plugin host (with ``--plugins-dir``/spec plugin files), each failure reported once."""
    from kdzoo.host.loading import get_host_with_files

    host = get_host_with_files(list(plugin_files))
    for plugin, reason in host.registry.failures.items():
        click.secho(f"warning: plugin '{plugin}' was not loaded: {reason}", fg="yellow", err=True)
    for warning in host.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    return host


set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a spec field (value parsed as YAML); repeatable."
)
plugins_dir_option = click.option(
    "--plugins-dir", "plugins_dirs", multiple=True, type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="Also load every *.py file in DIR as a plugin (prototype methods without packaging); repeatable.",
)
