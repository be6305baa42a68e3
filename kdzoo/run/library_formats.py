"""A trained network in its model library's own format (``kdzoo export --library-format``):
each saver writes into an empty staging folder that :func:`kdzoo.run.export.export_library_format`
publishes. Each records the resize and normalisation kdzoo applied, so that the library's
own preprocessing (or a reader of the config) feeds the model what it was trained on."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdzoo import __version__
from kdzoo.errors import KdzooError
from kdzoo.run.checkpoint import save_tensors, write_json

if TYPE_CHECKING:
    from kdzoo.api import Network

PLAIN_FORMAT = "kdzoo-model/1"
PLAIN_WEIGHTS = "model.safetensors"
PLAIN_CONFIG = "config.json"


def preprocessing(network: Network, manifest: dict[str, Any]) -> dict[str, Any]:
    """The model's input as kdzoo fed it: images of ``image_size`` resized (bilinear) to
    ``input_size``, then normalised with ``mean`` and ``std``."""
    size = int(manifest["image_size"])
    return {
        "image_size": size,
        "input_size": network.input_size or size,
        "mean": [float(v) for v in network.mean.flatten()],
        "std": [float(v) for v in network.std.flatten()],
        "interpolation": "bilinear",
    }


def save_transformers(network: Network, manifest: dict[str, Any], folder: Path) -> None:
    """``save_pretrained`` (config.json with the class names + model.safetensors) and a
    preprocessor_config.json, loadable by ``AutoModelForImageClassification`` and
    ``AutoImageProcessor``, and by kdzoo's ``hf`` model (``model_dir``)."""
    body = network.body
    classes = list(manifest.get("classes") or [])
    if len(classes) == network.num_classes:
        body.config.id2label = dict(enumerate(classes))
        body.config.label2id = {name: i for i, name in enumerate(classes)}
    body.save_pretrained(folder)
    pre = preprocessing(network, manifest)
    write_json(folder / "preprocessor_config.json", {
        "image_processor_type": "ViTImageProcessor",  # resize, rescale, normalise: what kdzoo did
        "do_resize": True,
        "size": {"height": pre["input_size"], "width": pre["input_size"]},
        "resample": 2,  # PIL bilinear
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": pre["mean"],
        "image_std": pre["std"],
    })


def save_timm(network: Network, manifest: dict[str, Any], folder: Path) -> None:
    """timm's own export (``timm.models.save_for_hf``, safetensors): config.json with the
    architecture, its arguments and the preprocessing, and model.safetensors; reloaded with
    ``timm.create_model('local-dir:FOLDER', pretrained=True)``."""
    from timm.models import save_for_hf

    pre = preprocessing(network, manifest)
    size = pre["input_size"]
    data_config = {"input_size": (3, size, size), "mean": tuple(pre["mean"]), "std": tuple(pre["std"]),
                   "interpolation": "bilinear", "crop_pct": 1.0}
    classes = list(manifest.get("classes") or [])
    model_config = {"label_names": classes} if len(classes) == network.num_classes else None
    try:
        save_for_hf(network.body, str(folder), model_config=model_config, safe_serialization=True, data_config=data_config)
    except ValueError as exc:  # e.g. a constructor argument timm cannot write to JSON
        raise KdzooError(f"--library-format: timm cannot save '{manifest['model']['params'].get('arch')}' in its format: {exc}") from None


def save_plain(network: Network, manifest: dict[str, Any], folder: Path) -> None:
    """The body's state dict as model.safetensors (no key prefix) and config.json: the kdzoo
    model reference that rebuilds the module, the classes and the preprocessing."""
    save_tensors(folder / PLAIN_WEIGHTS, network.body.state_dict())
    write_json(folder / PLAIN_CONFIG, {
        "format": PLAIN_FORMAT,
        "model": manifest["model"],  # kdzoo model plugin name and params: how the body is built
        "num_classes": network.num_classes,
        "classes": list(manifest.get("classes") or []),
        **preprocessing(network, manifest),
        "weights": PLAIN_WEIGHTS,
        "kdzoo_version": __version__,
    })
