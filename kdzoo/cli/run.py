"""``kdzoo validate``, ``kdzoo run`` and ``kdzoo schema``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from kdzoo import hookimpl
from kdzoo.cli.common import load_host_with_warnings, plugins_dir_option, set_option
from kdzoo.cli.launcher_options import launch_options
from kdzoo.errors import KdzooError, TrainingError
from kdzoo.run.distributed import is_main, record_errors
from kdzoo.run.launch import nproc_callback


def _load(spec_path: Path, overrides: tuple[str, ...], plugins_dirs: tuple[Path, ...]):
    """The host (with the spec's own plugin files and ``--plugins-dir``) and the validated runs."""
    from kdzoo.spec import load_spec
    from kdzoo.spec.plugin_files import plugin_files_of

    files = plugin_files_of(spec_path, plugins_dirs, overrides)
    host = load_host_with_warnings(files)
    data, runs = load_spec(spec_path, host.registry, list(overrides))
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
              help="Grids: arms that share data, teachers and schedule length train in one pass (on, the default), or one by one (off).")
@plugins_dir_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
@launch_options
@click.option("--nproc", type=click.IntRange(min=1), expose_value=False, callback=nproc_callback,
              help="Train on N processes of this machine (DDP, started with torchrun's launcher; several machines: torchrun -m kdzoo run).")
@record_errors
def run(spec_path: Path | None, out_dir: Path | None, overrides: tuple[str, ...], resume_dir: Path | None,
        arm_patterns: str | None, force: bool, fuse: str | None, plugins_dirs: tuple[Path, ...], quiet: bool, launch) -> None:
    """Train or distil as SPEC says, then print the results table."""
    from kdzoo.run import runner
    from kdzoo.run.tables import grid_table, run_table

    progress = True if quiet else None  # tqdm: None = only on a TTY
    started = time.perf_counter()
    if resume_dir is not None:
        if fuse is not None:
            raise KdzooError("--fuse: --resume RUN_DIR continues one run; a grid resumes by running its spec again")
        if spec_path is not None or overrides:
            raise KdzooError("--resume takes its spec from the run directory: give no SPEC and no --set")
        launch.require_grid("--resume RUN_DIR")
        host, spec = runner.resume_host_and_spec(resume_dir, plugins_dirs, load_host_with_warnings)
        summary = runner.run_single(spec, host, resume_dir, resume=True, log=click.echo, progress=progress, force=force)
        click.echo(run_table(summary))
        return
    if spec_path is None:
        raise click.UsageError("give a SPEC file, or --resume RUN_DIR")
    host, data, runs = _load(spec_path, overrides, plugins_dirs)
    if data.get("matrix") is None:
        launch.require_grid(str(spec_path))
        if fuse is not None:
            raise KdzooError(f"--fuse: {spec_path} has no matrix, so there are no arms to fuse")
    if fuse is not None and launch.launcher != "inline":
        raise KdzooError(f"--fuse: --launcher {launch.launcher} runs each arm in a job of its own, never fused; drop --fuse")
    plan = runner.plan_runs(data, runs, out_dir, arm_patterns)
    if plan.grid:
        click.echo(f"{spec_path}: {len(plan.runs)} runs -> {plan.run_dir}")
        if launch.launcher == "inline":
            results = runner.run_arms(plan.runs, host, plan.run_dir, log=click.echo, progress=progress, force=force, fuse=fuse != "off")
        else:  # the same arms, specs and skip rules, each run in a process (or SLURM task) of its own
            from kdzoo.run.launchers.grid import launch_grid

            results = launch_grid(plan, launch, spec_path, overrides, plugins_dirs, force=force, log=click.echo)
        click.echo(grid_table(results))
        failed = [name for name, summary in results if "failed" in summary]
        if plan.study and is_main():  # several processes: rank 0 writes the report
            from kdzoo.study.report import build_report, findings_markdown

            result = build_report(plan.run_dir, None, log=lambda message: click.echo(message, err=True))
            click.echo(f"\n{result.table}\n\n{findings_markdown(result.findings)}")
            click.echo(f"study report: {result.files[0].parent}")
    else:
        spec = plan.runs[0][1]
        click.echo(f"{spec_path}: {spec.kind} run -> {plan.run_dir}")
        summary = runner.run_single(spec, host, plan.run_dir, log=click.echo, progress=progress)
        click.echo(run_table(summary))
    click.echo(f"total time: {time.perf_counter() - started:.1f} s; results in {plan.run_dir}")
    if plan.grid and failed:  # scripts and CI must notice
        raise TrainingError(f"{len(failed)} of {len(plan.runs)} arms failed: {', '.join(failed)} (see failed.json in each)")


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
