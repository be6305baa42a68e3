"""``kdzoo validate``, ``kdzoo run`` and ``kdzoo schema``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from kdzoo import hookimpl
from kdzoo.cli.common import load_host_with_warnings, plugins_dir_option, set_option
from kdzoo.cli.launcher_options import launch_options
from kdzoo.errors import KdzooError
from kdzoo.run.distributed import record_errors
from kdzoo.run.launch import nproc_callback
from kdzoo.spec.models import TRACKERS


def _load(spec_path: Path, overrides: tuple[str, ...], plugins_dirs: tuple[Path, ...]):
    """The host (with the spec's own plugin files and ``--plugins-dir``) and the validated runs;
    refused when a model's pretrained weights are not cached on an offline machine."""
    from kdzoo.host.weights import refuse_missing_weights
    from kdzoo.spec import load_spec
    from kdzoo.spec.plugin_files import plugin_files_of

    files = plugin_files_of(spec_path, plugins_dirs, overrides)
    host = load_host_with_warnings(files)
    data, runs = load_spec(spec_path, host.registry, list(overrides))
    refuse_missing_weights(runs, host.registry, str(spec_path), overrides, plugins_dirs)
    return host, data, runs


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@set_option
@plugins_dir_option
def validate(spec_path: Path, overrides: tuple[str, ...], plugins_dirs: tuple[Path, ...]) -> None:
    """Validate SPEC (and every matrix arm) without running anything."""
    _, _, runs = _load(spec_path, overrides, plugins_dirs)
    kinds = sorted({spec.kind for _, spec in runs})
    arms = f"{len(runs)} runs ({'/'.join(kinds)})" if len(runs) > 1 else f"one {kinds[0]} run"
    click.echo(f"{spec_path}: valid, {arms}")


@click.command()
@click.argument("spec_path", metavar="SPEC", required=False, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Run directory (default: OUTPUT_DIR/NAME-TIMESTAMP; grids: OUTPUT_DIR/NAME).")
@set_option
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path), help="Continue an interrupted run from its last complete epoch.")
@click.option("--arms", "arm_patterns", metavar="GLOB[,GLOB]", help="Grids: run only the arms whose names match (e.g. to split a grid across processes).")
@click.option("--force", is_flag=True, help="Resume a run whose spec changed since it started; rerun grid arms that finished with another spec.")
@click.option("--fuse", type=click.Choice(["on", "off"]), default=None,
              help="Grids: arms that share data, teachers and schedule length train in one pass (on, the default inline), or one by one "
                   "(off). With --launcher local|slurm: on makes one job per fused group (default: one job per arm).")
@plugins_dir_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--track", "tracks", multiple=True, type=click.Choice(TRACKERS),
              help="Also log every run to TensorBoard or Weights & Biases (adds to the spec's `tracking:`); repeatable.")
@launch_options
@click.option("--nproc", type=click.IntRange(min=1), expose_value=False, callback=nproc_callback,
              help="Train on N processes of this machine (DDP, started with torchrun's launcher; several machines: torchrun -m kdzoo run).")
@record_errors
def run(spec_path: Path | None, out_dir: Path | None, overrides: tuple[str, ...], resume_dir: Path | None,
        arm_patterns: str | None, force: bool, fuse: str | None, plugins_dirs: tuple[Path, ...], quiet: bool,
        tracks: tuple[str, ...], launch) -> None:
    """Train or distil as SPEC says, then print the results table."""
    from kdzoo.run import runner

    progress = True if quiet else None  # tqdm: None = only on a TTY
    started = time.perf_counter()
    if resume_dir is not None:
        if fuse is not None:
            raise KdzooError("--fuse: --resume RUN_DIR continues one run; a grid resumes by running its spec again")
        if spec_path is not None or overrides:
            raise KdzooError("--resume takes its spec from the run directory: give no SPEC and no --set")
        if tracks:
            raise KdzooError("--track: a resumed run goes on with the trackers it started with (those its run directory holds)")
        launch.require_grid("--resume RUN_DIR")
        runner.resume_run(resume_dir, plugins_dirs, load_host_with_warnings, log=click.echo, progress=progress, force=force)
        return
    if spec_path is None:
        raise click.UsageError("give a SPEC file, or --resume RUN_DIR")
    if tracks:  # one more --set, so that launched arms (given the same overrides) track too
        from kdzoo.run.tracking import tracking_override

        overrides = (*overrides, tracking_override(spec_path, overrides, tracks))
    host, data, runs = _load(spec_path, overrides, plugins_dirs)
    if data.get("matrix") is None:
        launch.require_grid(str(spec_path))
        if fuse is not None:
            raise KdzooError(f"--fuse: {spec_path} has no matrix, so there are no arms to fuse")
    plan = runner.plan_runs(data, runs, out_dir, arm_patterns)
    run_grid = None  # inline: the runner runs the arms itself (fused where they can be)
    if launch.launcher != "inline":  # the same arms, specs and skip rules, each in a process (or SLURM task) of its own
        from functools import partial

        from kdzoo.run.launchers.grid import launch_grid

        run_grid = partial(launch_grid, options=launch, spec_path=spec_path, overrides=overrides, plugins_dirs=plugins_dirs,
                           force=force, log=click.echo, fuse=fuse == "on")  # launched: one job per arm unless asked

    outcome = runner.run_plan(plan, host, str(spec_path), log=click.echo, progress=progress, force=force, fuse=fuse != "off",
                              run_grid=run_grid, report_log=lambda message: click.echo(message, err=True))
    click.echo(f"total time: {time.perf_counter() - started:.1f} s; results in {plan.run_dir}")
    failure = runner.grid_failure(outcome)
    if failure is not None:  # scripts and CI must notice
        raise failure


@click.command()
@click.option("--kind", type=click.Choice(["train", "distill", "all"]), default="all")
def schema(kind: str) -> None:
    """Print the JSON schema of the spec."""
    from kdzoo.spec import json_schema

    schemas = json_schema()
    click.echo(json.dumps(schemas if kind == "all" else schemas[kind], indent=2))


@hookimpl
def register_commands(cli):
    for command in (validate, run, schema):
        cli.add_command(command)
