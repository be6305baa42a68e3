"""``kdzoo export RUN_DIR``: a distilled model for use outside kdzoo (ONNX, the model library's own format)."""

from __future__ import annotations

from pathlib import Path

import click

from kdzoo import hookimpl
from kdzoo.cli.common import load_host_with_warnings, plugins_dir_option


@click.command()
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(path_type=Path))
@click.option("--onnx", "onnx_path", metavar="OUT.onnx", type=click.Path(path_type=Path, dir_okay=False),
              help="Write an ONNX graph: float32 images (batch, 3, S, S) RGB in [0, 1] at the dataset's size in, "
                   "logits out, resize and normalisation inside; dynamic batch; opset 18.")
@click.option("--library-format", "library_dir", metavar="DIR", type=click.Path(path_type=Path, file_okay=False),
              help="Save into the new folder DIR in the model library's format: save_pretrained (Hugging Face "
                   "models), timm's config.json + model.safetensors (timm models), else safetensors + config.json.")
@plugins_dir_option
def export(run_dir: Path, onnx_path: Path | None, library_dir: Path | None, plugins_dirs: tuple[Path, ...]) -> None:
    """Export the trained model of the finished run RUN_DIR (a grid's arm: GRID/arms/NAME, or a checkpoint file)."""
    from kdzoo.run.export import ONNX_OPSET, describe, export_library_format, export_onnx, load_network

    if onnx_path is None and library_dir is None:
        raise click.UsageError("give --onnx OUT.onnx, --library-format DIR, or both")
    network, manifest = load_network(run_dir, load_host_with_warnings, plugins_dirs)
    what = describe(network, manifest)
    if onnx_path is not None:
        export_onnx(network, manifest, onnx_path)
        click.echo(f"{run_dir}: {what} -> {onnx_path} (ONNX opset {ONNX_OPSET}, dynamic batch)")
    if library_dir is not None:
        library = export_library_format(network, manifest, library_dir)
        click.echo(f"{run_dir}: {what} -> {library_dir} ({library} format)")


@hookimpl
def register_commands(cli):
    cli.add_command(export)
