"""``kdzoo fetch SPEC``: download into the hub caches every pretrained weight a spec needs."""

from __future__ import annotations

from pathlib import Path

import click

from kdzoo import hookimpl
from kdzoo.cli.common import load_host_with_warnings, plugins_dir_option, set_option
from kdzoo.errors import KdzooError


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@set_option
@plugins_dir_option
def fetch(spec_path: Path, overrides: tuple[str, ...], plugins_dirs: tuple[Path, ...]) -> None:
    """Download the pretrained weights SPEC needs (every arm, inline teachers included) into the
    hub caches (HF_HOME, TORCH_HOME), for a later run on a machine without internet."""
    from kdzoo.host.weights import fetch_weights
    from kdzoo.spec import load_spec
    from kdzoo.spec.plugin_files import plugin_files_of

    host = load_host_with_warnings(plugin_files_of(spec_path, plugins_dirs, overrides))
    _, runs = load_spec(spec_path, host.registry, list(overrides))
    try:
        fetched = fetch_weights(runs, host.registry, log=click.echo)
    except KdzooError as exc:
        raise KdzooError(f"{spec_path}: {exc}") from None
    if not fetched:
        click.echo(f"{spec_path}: no model needs pretrained weights from a hub; nothing to fetch")
        return
    downloaded = sum(1 for _, source in fetched if source.get("fetched"))
    click.echo(
        f"{spec_path}: {len(fetched)} pretrained weight{'s' if len(fetched) != 1 else ''}, {downloaded} downloaded, "
        f"{len(fetched) - downloaded} already cached; a machine without internet finds them through the same "
        "HF_HOME / TORCH_HOME (with HF_HUB_OFFLINE=1 set there)"
    )


@hookimpl
def register_commands(cli):
    cli.add_command(fetch)
