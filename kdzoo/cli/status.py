"""``kdzoo status``: where a grid stands — its arms and the teachers they need — however
its arms are run (inline, ``--launcher local``, SLURM). Attached through
``register_commands``; the reading lives in :mod:`kdzoo.run.launchers.status`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from kdzoo import hookimpl, rundir
from kdzoo.cli.common import load_host_with_warnings, plugins_dir_option, set_option
from kdzoo.errors import KdzooError


def _planned_from_spec(spec_path: Path, overrides: tuple[str, ...], plugins_dirs: tuple[Path, ...], out_dir: Path | None):
    """The grid directory ``kdzoo run SPEC`` would use, and its arms with their teachers'
    cache entries (computed as the run computes them)."""
    from kdzoo.run.runner import default_run_dir
    from kdzoo.run.teachers import teacher_dir
    from kdzoo.spec import DistillSpec, load_spec
    from kdzoo.spec.plugin_files import plugin_files_of

    host = load_host_with_warnings(plugin_files_of(spec_path, plugins_dirs, overrides))
    data, runs = load_spec(spec_path, host.registry, list(overrides))
    if data.get("matrix") is None:
        raise KdzooError(f"{spec_path} has no matrix: its runs go to timestamped directories; give `kdzoo status RUN_DIR`")
    grid_dir = out_dir or default_run_dir(runs[0][1], data.get("name"), grid=True)
    planned = {
        name: {t.name: str(teacher_dir(t.train).resolve()) for t in (spec.teachers if isinstance(spec, DistillSpec) else []) if t.train}
        for name, spec in runs
    }
    return grid_dir, planned


@click.command()
@click.argument("target", metavar="RUN_DIR_OR_SPEC", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON (for scripts).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="With a SPEC: the grid directory given to `kdzoo run --out`.")
@set_option
@plugins_dir_option
def status(target: Path, as_json: bool, out_dir: Path | None, overrides: tuple[str, ...], plugins_dirs: tuple[Path, ...]) -> None:
    """Where a grid stands: its arms and the teachers they need.

    Each arm is done (with its test top-1), running, stopped (resumable), failed (and
    why) or pending; each teacher cache entry done, training, partial or pending.

    RUN_DIR_OR_SPEC is a grid (or run) directory, or a grid spec (with the same --set and
    --out as `kdzoo run`), which also lists arms that have not started.
    """
    from kdzoo.run.launchers.status import format_status, grid_status

    if target.is_file():
        grid_dir, planned = _planned_from_spec(target, overrides, plugins_dirs, out_dir)
        result = grid_status(grid_dir, planned)
    elif target.is_dir():
        if overrides or out_dir:
            raise KdzooError("--set and --out go with a SPEC; RUN_DIR is read as it is")
        result = grid_status(target)
        if not result["arms"] or (not result["grid"] and result["arms"][0]["state"] == "pending"):
            raise KdzooError(f"{target} is not a kdzoo grid or run directory (no {rundir.GRID_FILE}, {rundir.ARMS_DIR}/ or {rundir.SPEC_FILE})")
    else:
        raise KdzooError(f"{target}: no such run directory or spec file")
    click.echo(json.dumps(result, indent=2) if as_json else format_status(result))


@hookimpl
def register_commands(cli):
    cli.add_command(status)
