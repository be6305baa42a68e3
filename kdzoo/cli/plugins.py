"""The plugin commands of the ``kdzoo`` CLI: ``plugins`` (list, ``check``, ``new``),
``install`` and ``uninstall``.

Attached to the main CLI through ``register_commands``, as plugins attach theirs. Imports stay inside the
commands: listing plugins must not import torch (only ``plugins check`` runs components).
Installing is pip in the interpreter that runs kdzoo (``sys.executable -m pip``), so
a plugin always lands where this kdzoo will find it.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import click

from kdzoo import hookimpl
from kdzoo.errors import KdzooError, did_you_mean


def _echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2))


# ----------------------------------------------------------------------------- kdzoo plugins
@click.group("plugins", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--available", is_flag=True, help="List the plugin catalogue (registry.yaml) and which plugins are installed.")
@click.option("-v", "--verbose", is_flag=True, help="Show modules, and each component's description and default params.")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool, available: bool, verbose: bool) -> None:
    """List installed plugins and their components, and plugins that failed to load.

    \b
    kdzoo plugins                  installed plugins and their components
    kdzoo plugins --available      the catalogue, with what is installed
    kdzoo plugins check PLUGIN     check that a plugin is fit to use
    kdzoo plugins new NAME         start a new plugin package
    """
    if ctx.invoked_subcommand is not None:
        return
    if available:
        _show_available(as_json, verbose)
    else:
        _show_installed(as_json, verbose)


def _describe_params(params) -> dict:
    """Default params and JSON schema of a params model; None for what a model cannot give
    (a param type without a JSON form: `kdzoo plugins check` reports it)."""
    described: dict = {}
    for key, make in (("defaults", lambda: params.model_validate({}).model_dump(mode="json")), ("params", params.model_json_schema)):
        try:
            described[key] = make()
        except Exception:
            described[key] = None
    return described


def installed_plugins() -> dict[str, list[dict]]:
    """``{"plugins": [...], "failed": [...]}``: what ``kdzoo plugins --json`` prints. Each
    component comes with its description, default params and params JSON schema."""
    from kdzoo.host.hookspecs import KINDS
    from kdzoo.host.loading import get_host

    host = get_host()
    listed = []
    for name, info in sorted(host.plugins.items()):
        components = {
            kind: [
                {"name": c.name, "description": c.description, **_describe_params(c.params)}
                for c in host.registry.by_kind(kind)
                if c.plugin == name
            ]
            for kind in KINDS
        }
        listed.append(
            {
                "name": name,
                "distribution": info.distribution,
                "version": info.version,
                "module": info.module,
                "api": ".".join(map(str, info.api)),
                "components": {kind: items for kind, items in components.items() if items},
            }
        )
    failed = [{"name": name, "reason": reason} for name, reason in sorted(host.registry.failures.items())]
    return {"plugins": listed, "failed": failed}


def _wrapped(label: str, text: str, indent: int) -> str:
    prefix = " " * indent + label
    return textwrap.fill(text, width=100, initial_indent=prefix, subsequent_indent=" " * len(prefix))


def _show_installed(as_json: bool, verbose: bool) -> None:
    found = installed_plugins()
    if as_json:
        _echo_json(found)
        return
    if not found["plugins"] and not found["failed"]:
        click.echo("No kdzoo plugins are installed (`kdzoo plugins --available` lists some).")
    for plugin in found["plugins"]:
        heading = f"{plugin['name']} {plugin['version'] or ''}".rstrip()
        if plugin["distribution"] and plugin["distribution"] != plugin["name"]:
            heading += f" (distribution {plugin['distribution']})"
        if verbose:
            heading += f"  [module {plugin['module']}, plugin API {plugin['api']}]"
        click.echo(heading)
        width = max((len(kind) for kind in plugin["components"]), default=0) + 2
        for kind, items in plugin["components"].items():
            if verbose:
                click.echo(f"  {kind}:")
                name_width = max(len(c["name"]) for c in items) + 2
                for c in items:
                    defaults = ", ".join(f"{k}={v}" for k, v in (c["defaults"] or {}).items())
                    text = (c["description"] or "-") + (f" [{defaults}]" if defaults else "")
                    click.echo(_wrapped(f"{c['name']:<{name_width}}", text, 4))
            else:
                click.echo(_wrapped(f"{kind:<{width}}", ", ".join(c["name"] for c in items), 2))
    if found["failed"]:
        click.secho("Failed to load:", fg="red")
        for failure in found["failed"]:
            click.echo(_wrapped(f"{failure['name']}: ", failure["reason"], 2))


def _count(number: int, kind: str) -> str:
    plural = kind + ("es" if kind.endswith("s") else "s")
    return f"{number} {kind if number == 1 else plural}"


def _show_available(as_json: bool, verbose: bool) -> None:
    import importlib.metadata as md

    from kdzoo.authoring.catalogue import load_catalogue

    catalogue = load_catalogue()
    rows = []
    for entry in catalogue.plugins:
        try:
            installed = md.version(entry.name)
        except md.PackageNotFoundError:
            installed = None
        rows.append({**entry.model_dump(), "installed": installed})
    if as_json:
        _echo_json({"catalogue": str(catalogue.base_dir), "plugins": rows})
        return
    name_width = max((len(r["name"]) for r in rows), default=4) + 2
    click.echo(f"{'NAME':<{name_width}}{'INSTALLED':<11}{'BUILT-IN':<10}COMPONENTS")
    for row in rows:
        counts = ", ".join(_count(len(names), kind) for kind, names in row["kinds"].items())
        click.echo(f"{row['name']:<{name_width}}{row['installed'] or 'no':<11}{'yes' if row['builtin'] else 'no':<10}{counts}")
        click.echo(_wrapped("", row["summary"], name_width))
        if verbose:
            for kind, names in row["kinds"].items():
                click.echo(_wrapped(f"{kind}: ", ", ".join(names), name_width))
    click.echo("\nInstall one with `kdzoo install NAME`.")


@plugins.command("check")
@click.argument("target", metavar="DIST_OR_MODULE")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--params", "params", multiple=True, metavar="NAME.KEY=VALUE",
    help="Also smoke-run component NAME with param KEY set to VALUE (read as YAML). Repeatable; "
    "the options for one NAME make one extra run.",
)
@click.pass_context
def check(ctx: click.Context, target: str, as_json: bool, params: tuple[str, ...]) -> None:
    """Check that a plugin loads, registers valid components and runs them.

    DIST_OR_MODULE is a distribution (kdzoo-example-plugin), a plugin (entry-point)
    name or an importable module. Each component runs on tiny inputs with its
    default params, with each `examples` params set it registered, and with the
    --params given for it (e.g. --params kd.temperature=8). Exits with status 1 when
    a check fails, 2 when --params name no component or give an invalid value.
    """
    from kdzoo.authoring.check import check_plugin

    report = check_plugin(target, params=params)
    click.echo(report.to_json() if as_json else report.to_text())
    if not report.ok:
        ctx.exit(1)


@plugins.command("new")
@click.argument("name")
@click.option(
    "--dir", "root", type=click.Path(file_okay=False, path_type=Path), help="Folder to write the package to (default: ./NAME)."
)
@click.option("--from", "from_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Package this single-file plugin (the FILE.py a spec lists under plugins:) instead of the sample loss.")
def new(name: str, root: Path | None, from_file: Path | None) -> None:
    """Start a plugin package NAME (e.g. kdzoo-confidence) with one sample loss,
    or from a single-file plugin (--from my_losses.py).

    It installs, passes `kdzoo plugins check` and its own tests as it stands; then
    make the loss your own.
    """
    import importlib.metadata as md

    from kdzoo.host.loading import get_host
    from kdzoo.authoring.scaffold import create_plugin, plugin_names

    names = plugin_names(name)
    try:
        md.distribution(names.distribution)
    except md.PackageNotFoundError:
        pass
    else:
        raise KdzooError(f"a distribution named {names.distribution} is already installed; choose another NAME")
    clash = get_host().registry.components.get(("loss", names.loss))
    if clash is not None and from_file is None:
        raise KdzooError(
            f"the sample loss would be called '{names.loss}', which plugin '{clash.plugin}' already registers; choose another NAME"
        )
    root = create_plugin(name, root, from_file)
    click.echo(f"Created plugin {names.distribution} in {root}:")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        click.echo(f"  {path.relative_to(root)}")
    click.echo(
        "\nNext:\n"
        f"  cd {shlex.quote(str(root))}\n"
        "  kdzoo install -e .\n"
        f"  kdzoo plugins check {names.distribution}\n"
        "  python -m pytest\n"
        f"Then use it in a spec: losses: [{{name: {names.loss}, weight: 0.5}}, ...]"
    )


# ----------------------------------------------------------------------------- install / uninstall
def resolve_requirement(target: str, *, editable: bool = False, pypi: bool = False) -> str:
    """What ``kdzoo install TARGET`` hands to pip; user mistakes raise KdzooError."""
    from kdzoo import __version__
    from kdzoo.authoring.catalogue import is_local_requirement, is_url, load_catalogue

    if is_url(target):
        return target
    path = Path(target).expanduser()
    if path.exists() or target.startswith((".", "/", "~")) or "/" in target or "\\" in target:
        if not path.exists():
            raise KdzooError(f"{target}: no such file or folder")
        if path.is_dir() and not any((path / f).is_file() for f in ("pyproject.toml", "setup.py", "setup.cfg")):
            raise KdzooError(f"{path} is not a Python package folder (no pyproject.toml)")
        if editable and not path.is_dir():
            raise KdzooError(f"-e installs a package folder in development mode; {path} is a file")
        return str(path.resolve())
    match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*((?:[<>=!~].*)?)", target)
    if match is None:
        raise KdzooError(f"'{target}' is not a plugin name, a path or a URL")
    name, extras, specifier = match.group(1), match.group(2) or "", match.group(3)
    if pypi:
        if editable:
            raise KdzooError("-e needs a local package folder, not a package index name")
        return target
    catalogue = load_catalogue()
    entry = catalogue.find(name)
    if entry is None:
        raise KdzooError(
            f"'{name}' is not in the plugin catalogue{did_you_mean(name, catalogue.names())}; "
            "`kdzoo plugins --available` lists the known plugins. To install something else, "
            "give its path or URL, or pass --pypi to take NAME from the package index as it is"
        )
    if entry.needs_newer_kdzoo:
        raise KdzooError(f"{entry.name} needs kdzoo >= {entry.min_kdzoo}; this is kdzoo {__version__}: upgrade kdzoo first")
    requirement = entry.requirement(catalogue.base_dir)
    if is_local_requirement(entry.pip):
        if specifier:
            raise KdzooError(f"{entry.name} installs from the folder {requirement}: a version specifier does not apply")
        if not Path(requirement).exists():
            raise KdzooError(f"{entry.name} installs from {requirement}, which does not exist (it ships with kdzoo's source tree)")
        return requirement + extras
    if editable:
        raise KdzooError(f"-e needs a local package folder; {entry.name} comes from the package index ({entry.pip})")
    return entry.pip + extras + specifier


def _run_pip(arguments: list[str]) -> None:
    command = [sys.executable, "-m", "pip", *arguments]
    click.echo(f"$ {shlex.join(command)}", err=True)
    status = subprocess.run(command).returncode
    if status != 0:
        raise KdzooError(f"pip exited with status {status} (its output is above)")
    from kdzoo.host.loading import reset_host

    reset_host()  # the next look at the plugins in this process sees the change


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("target", metavar="NAME|PATH|URL")
@click.option("-e", "--editable", is_flag=True, help="Install a local package folder in development mode.")
@click.option("-U", "--upgrade", is_flag=True, help="Upgrade the plugin if it is already installed.")
@click.option("--pypi", is_flag=True, help="Take NAME from the package index even though the catalogue does not list it.")
@click.argument("pip_args", nargs=-1, type=click.UNPROCESSED)
def install(target: str, editable: bool, upgrade: bool, pypi: bool, pip_args: tuple[str, ...]) -> None:
    """Install a plugin with pip, into the Python environment that runs kdzoo.

    \b
    NAME  a plugin of the catalogue (`kdzoo plugins --available`), e.g. kdzoo-example-plugin
    PATH  a plugin package folder or wheel, e.g. `kdzoo install -e .` while developing
    URL   anything pip installs from, e.g. git+https://host/you/kdzoo-foo

    Further arguments go to pip unchanged, e.g. `kdzoo install -e . --no-deps`.
    """
    requirement = resolve_requirement(target, editable=editable, pypi=pypi)
    arguments = ["install", *(["--upgrade"] if upgrade else []), *(["-e"] if editable else []), requirement, *pip_args]
    _run_pip(arguments)
    click.echo(f"Installed {target}. `kdzoo plugins` lists the components it adds.")


def installed_distribution(name: str) -> str:
    """The distribution ``kdzoo uninstall NAME`` removes: NAME as a distribution or a plugin name."""
    import importlib.metadata as md

    from kdzoo.authoring.catalogue import normalise
    from kdzoo.host.hookspecs import ENTRY_POINT_GROUP
    from kdzoo.host.loading import plugin_entry_points

    if normalise(name) == "kdzoo":
        raise KdzooError("kdzoo does not uninstall itself; use `python -m pip uninstall kdzoo`")
    entry_points = plugin_entry_points()
    distributions = {normalise(ep.dist.metadata["Name"]): ep.dist.metadata["Name"] for ep in entry_points if ep.dist is not None}
    if normalise(name) in distributions:
        return distributions[normalise(name)]
    for ep in entry_points:
        if ep.name == name and ep.dist is not None:
            return ep.dist.metadata["Name"]
    try:
        md.distribution(name)
    except md.PackageNotFoundError:
        known = sorted(set(distributions.values()) | {ep.name for ep in entry_points})
        raise KdzooError(
            f"no installed plugin named '{name}'{did_you_mean(name, known)}; `kdzoo plugins` lists the installed ones"
        ) from None
    raise KdzooError(
        f"{name} is installed but is not a kdzoo plugin (no entry point in the '{ENTRY_POINT_GROUP}' group); "
        "kdzoo only uninstalls plugins: use pip for other packages"
    )


@click.command()
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def uninstall(name: str, yes: bool) -> None:
    """Uninstall plugin NAME (a distribution or plugin name) with pip."""
    from kdzoo.host.loading import BUILTIN_PLUGINS

    distribution = installed_distribution(name)
    if distribution in BUILTIN_PLUGINS and not yes:
        click.confirm(
            f"{distribution} is a built-in kdzoo plugin: its components (and specs that use them) stop "
            f"working until it is reinstalled (pip install -e plugins/{distribution}). Uninstall it?",
            abort=True,
        )
        yes = True
    _run_pip(["uninstall", distribution, *(["-y"] if yes else [])])


@hookimpl
def register_commands(cli):
    for command in (plugins, install, uninstall):
        cli.add_command(command)
