"""A finished run's model outside kdzoo: rebuilt for inference, as ONNX, or in its model
library's own format (``kdzoo export``, :func:`kdzoo.load_model`).

What is exported is the trained network exactly as kdzoo evaluated it: float RGB images in
[0, 1] at the dataset's size in, logits out, the resize and normalisation inside. Loss
modules (connectors, memory banks) are training-only and left out, except the head a loss
supplies for the student to predict through (SimKD's projector and the teacher's reused
classifier, :mod:`kdzoo.run.heads`): that student is loaded and exported predicting
through it, as it was evaluated (ONNX holds it; a library's own format cannot).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdzoo import __version__, rundir
from kdzoo.errors import KdzooError
from kdzoo.run.checkpoint import atomic_write

if TYPE_CHECKING:
    from kdzoo.api import Network
    from kdzoo.host import PluginHost

ONNX_OPSET = 18  # the dynamo exporter's native opset (no version conversion); onnxruntime >= 1.14 runs it
ONNX_INPUT = "images"  # float32 (batch, 3, size, size), RGB in [0, 1]
ONNX_OUTPUT = "logits"  # float32 (batch, num_classes)
EXTERNAL_DATA_BYTES = 1 << 30  # past this the weights go to OUT.onnx.data (protobuf caps a file at 2 GB)


def check_finished_run(path: Path) -> None:
    """Refuse, naming why, a directory that does not hold a finished run (a grid, a run that
    failed, stopped or is still running); checkpoint files are checked when read."""
    if not path.exists():
        raise KdzooError(f"run directory not found: {path}")
    if not path.is_dir() or rundir.is_finished(path):
        return
    arms = rundir.arm_dirs(path)
    if arms is not None:
        names = ", ".join(a.name for a in arms[:5]) + (" ..." if len(arms) > 5 else "")
        raise KdzooError(f"{path} is a grid, not one run: give one of its arms, {path / rundir.ARMS_DIR}/NAME ({names})")
    failure = rundir.read_json(path / rundir.FAILED_FILE)
    if failure is not None:
        raise KdzooError(f"{path} is a run that failed ({failure.get('error')}): it has no trained model")
    if rundir.has_state(path):
        raise KdzooError(f"{path} is an unfinished run (running, or stopped): finish it with kdzoo run --resume {path}")
    raise KdzooError(f"{path} is not a finished kdzoo run directory (no {rundir.SUMMARY_FILE} and {rundir.MODEL_FILE})")


def load_network(path: str | Path, load_host: Callable[[list[Path]], PluginHost], plugins_dirs=()) -> tuple[Network, dict[str, Any]]:
    """The trained network of a finished run (or a checkpoint file), in eval mode on the CPU,
    and its manifest. The model is rebuilt by its plugin from the manifest's model reference
    (the run's own plugin files are loaded when they still exist) and its weights verified."""
    import torch

    from kdzoo.api import ImageData
    from kdzoo.run.teachers import load_teacher
    from kdzoo.spec.plugin_files import files_in_dirs

    path = Path(path)
    check_finished_run(path)
    _, manifest = rundir.resolve_checkpoint(path)
    size = manifest.get("image_size")
    if not isinstance(size, int) or size < 1:
        raise KdzooError(f"{rundir.manifest_path(path / rundir.MODEL_FILE if path.is_dir() else path)}: "
                         f"no image_size (got {size!r}); written by an older kdzoo?")
    recorded = [Path(entry["path"]) for entry in manifest.get("plugin_files") or [] if isinstance(entry, dict) and "path" in entry]
    host = load_host([*(p for p in recorded if p.is_file()), *files_in_dirs(plugins_dirs)])
    # load_teacher checks the checkpoint against a dataset; only its class names and image size matter here.
    classes = manifest.get("classes") or [str(i) for i in range(manifest.get("num_classes") or 0)]
    empty = torch.zeros(0, 3, size, size, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    data = ImageData(*empty, *empty, classes=list(classes), name=f"the dataset of {path}")
    network, manifest = load_teacher(host, path, data)
    return network.eval(), manifest


def image_size(manifest: dict[str, Any]) -> int:
    return int(manifest["image_size"])


def describe(network: Network, manifest: dict[str, Any]) -> str:
    """``cifar-resnet (4 classes, 32x32 RGB in [0, 1])``: what an export holds."""
    size = image_size(manifest)
    return f"{manifest['model']['name']} ({network.num_classes} classes, {size}x{size} RGB in [0, 1])"


def _onnx_exporter():
    import torch

    try:
        import onnx  # noqa: F401  (the dynamo exporter needs both)
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise KdzooError(f"ONNX export needs the onnx and onnxscript packages ({exc.name} is missing): "
                         "pip install 'kdzoo[export]'") from None
    return torch.onnx


def export_onnx(network: Network, manifest: dict[str, Any], out: str | Path) -> Path:
    """Write ``network`` as an ONNX graph (opset :data:`ONNX_OPSET`, dynamic batch axis):
    input ``images`` float32 ``(batch, 3, S, S)`` RGB in [0, 1] at the dataset's size S,
    output ``logits`` ``(batch, num_classes)``; the resize and normalisation are in the graph.

    Exported with torch's dynamo exporter (``torch.export``; the TorchScript one is
    deprecated), written to a temporary name in ``out``'s folder and renamed into place."""
    import torch

    torch_onnx = _onnx_exporter()
    out = Path(out)
    if out.suffix != ".onnx":
        raise KdzooError(f"--onnx {out}: the file name must end in .onnx")
    size = image_size(manifest)
    network = network.eval().to("cpu", torch.float32)
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    try:
        program = torch_onnx.export(
            network, (example,), dynamo=True, opset_version=ONNX_OPSET, input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT], dynamic_shapes={"images": {0: batch}}, optimize=True, verbose=False,
        )
    except Exception as exc:  # the exporter's errors name the unsupported operator
        raise KdzooError(f"cannot export {manifest['model']['name']} to ONNX: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    _annotate(program.model, network, manifest)
    external = sum(t.numel() * t.element_size() for t in network.state_dict().values()) > EXTERNAL_DATA_BYTES
    if not external:
        atomic_write(out, lambda tmp: program.save(tmp, external_data=False))
        return out
    # The graph names its data file, so both are written under their final names in a
    # temporary folder beside ``out``, then moved: the data first, the graph last.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as staging:
        staged = Path(staging) / out.name
        program.save(staged, external_data=True)
        for path in sorted(Path(staging).iterdir(), key=lambda p: p == staged):
            os.replace(path, out.parent / path.name)
    return out


def _annotate(model: Any, network: Network, manifest: dict[str, Any]) -> None:
    """What a user of the .onnx file needs to know, in its metadata."""
    size = image_size(manifest)
    model.doc_string = (f"kdzoo {__version__}: {describe(network, manifest)}. Input '{ONNX_INPUT}': float32 "
                        f"(batch, 3, {size}, {size}), RGB in [0, 1]; resize and normalisation are in the graph. "
                        f"Output '{ONNX_OUTPUT}': (batch, {network.num_classes}).")
    model.metadata_props.update({
        "kdzoo_version": __version__,
        "kdzoo_model": json.dumps(manifest["model"]),
        "classes": json.dumps(manifest.get("classes") or []),
        "image_size": str(size),
    })


def library_of(network: Network) -> str:
    """The library whose format a model is saved in: ``transformers``, ``timm`` or ``kdzoo``
    (a plain safetensors file plus a JSON config), told by the body's class."""
    top = type(network.body).__module__.split(".")[0]
    return top if top in ("transformers", "timm") else "kdzoo"


def export_library_format(network: Network, manifest: dict[str, Any], directory: str | Path) -> str:
    """Save the network in its model library's format in ``directory`` (new, or empty) and
    return the library's name: Hugging Face ``save_pretrained`` (+ preprocessor_config.json)
    for transformers models, timm's ``save_for_hf`` layout (config.json + model.safetensors,
    loaded by ``timm.create_model('local-dir:DIR', pretrained=True)``) for timm models, a
    plain ``model.safetensors`` + ``config.json`` otherwise. The files are written in a
    temporary folder beside ``directory`` and published by one rename."""
    from kdzoo.run import library_formats

    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise KdzooError(f"--library-format {directory}: exists and is not an empty folder; choose a new one")
    from kdzoo.run.heads import HeadedNetwork

    if isinstance(network, HeadedNetwork):
        raise KdzooError(f"--library-format: this model predicts through the head of loss '{network.head_loss}' (modules "
                         "outside its network), which its library's format cannot hold; export it with --onnx, or load "
                         "it with kdzoo.load_model")
    library = library_of(network)
    save = {"transformers": library_formats.save_transformers, "timm": library_formats.save_timm,
            "kdzoo": library_formats.save_plain}[library]
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        save(network, manifest, staging)
        staging.chmod(0o777 & ~_umask())
        if directory.exists():
            directory.rmdir()  # empty (checked above)
        os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return library


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
