"""The ``kdzoo`` command line: commands only, no orchestration (that is :mod:`kdzoo.run`
and :mod:`kdzoo.study`).

Built-in commands are attached exactly as plugins attach theirs: each command module
implements ``register_commands(cli)``. Heavy imports (torch, plugin implementations)
happen inside the commands that train, so ``--help``, ``validate`` and ``plugins``
answer in about a second.
"""

from __future__ import annotations

import os

import click

from kdzoo import __version__
from kdzoo.errors import KdzooError
from kdzoo.host.build import DEBUG_ENV, debug_enabled

# The built-in command modules, attached through their register_commands hook.
CORE_COMMAND_MODULES = ("kdzoo.cli.run", "kdzoo.cli.plugins", "kdzoo.cli.study", "kdzoo.cli.status", "kdzoo.cli.fetch",
                        "kdzoo.cli.export")


class KdzooGroup(click.Group):
    """Turns user errors into a one-paragraph message and an exit code, never a traceback
    (unless ``--debug``)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KdzooError as exc:
            if debug_enabled():
                raise
            click.secho(f"Error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not debug_enabled():
        # Plugin-code guards read the environment; restored when the command ends.
        os.environ[DEBUG_ENV] = "1"
        ctx.call_on_close(lambda: os.environ.pop(DEBUG_ENV, None))


@click.group(cls=KdzooGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kdzoo")
@click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
              help=f"Show tracebacks of errors, plugin errors included (or set {DEBUG_ENV}=1).")
def cli() -> None:
    """kdzoo: a plugin-based knowledge-distillation method zoo.

    Train teachers and distil students from a YAML spec (`kdzoo run SPEC`); methods,
    models, datasets, augmentations and metrics come from plugins (`kdzoo plugins`).
    """


def attach_commands(manager, warn: bool = True) -> None:
    """Call every ``register_commands`` implementation in ``manager`` with this group."""
    from kdzoo.host.loading import call_hook_each

    for plugin, exc in call_hook_each(manager, "register_commands", cli=cli):
        if warn:
            click.secho(f"warning: plugin '{plugin}' failed to add commands: {exc!r}", fg="yellow", err=True)


def _attach_core_commands() -> None:
    import importlib

    from kdzoo.host.loading import new_manager

    manager = new_manager()
    for name in CORE_COMMAND_MODULES:
        manager.register(importlib.import_module(name), name=name)
    attach_commands(manager)


_attach_core_commands()


def main() -> None:
    from kdzoo.host.loading import get_host

    attach_commands(get_host().manager)
    cli(prog_name="kdzoo")
