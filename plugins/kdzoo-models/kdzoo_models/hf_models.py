"""Hugging Face transformers image classifiers from the hub, a local directory or a config.

``model_id`` loads through ``from_pretrained`` and the hub cache (HF_HOME, offline mode
obeyed); configs are built with ``AutoConfig.for_model`` and directories are read with
``local_files_only=True`` (nothing downloaded). Taps are found with one probe forward that asks
the model for its attentions and hidden states and matches them to the modules that
produced them, so module paths need not be hard-coded per transformers version.
"""

from __future__ import annotations

import inspect
import json
import operator
from pathlib import Path
from typing import Any

from torch import nn
from transformers import AutoConfig, AutoModelForImageClassification
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

from kdzoo.api import IMAGENET_MEAN, IMAGENET_STD, Network
from kdzoo.api import KdzooError, did_you_mean
from kdzoo_models import HfParams
from kdzoo_models.common import (
    first_producer,
    last_producer,
    probe_images,
    probing,
    recorded_outputs,
    run_probe,
    unknown_name_error,
)
from kdzoo_models.hub import locate_hf, manifest_source, one_line
from kdzoo_models.torch_hub import file_sha256
from kdzoo_models.weights import load_weights

# Eager attention computes the probabilities explicitly and hands them out as the second
# item of the attention module's output (SDPA / flash kernels never materialise them).
ATTENTION_IMPLEMENTATION = "eager"


def build_hf(params: HfParams, *, num_classes: int, image_size: int) -> Network:
    """A transformers image classifier (e.g. ViT) -- Wolf et al., "Transformers", EMNLP 2020 (system demos)."""
    if sum(source is not None for source in (params.model_id, params.model_dir, params.config)) != 1:
        raise KdzooError(
            "hf model: give exactly one of model_id (a Hugging Face hub repository), model_dir (a local "
            "save_pretrained directory) or config (model_type plus its fields)"
        )
    source = None
    if params.config is not None:
        body = _from_config(params.config, num_classes)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif params.model_id is not None:
        body, located = _from_hub(params, num_classes)
        snapshot = located.get("cache")
        mean, std = _processor_normalisation(Path(snapshot)) if snapshot else (IMAGENET_MEAN, IMAGENET_STD)
        source = manifest_source(located)
    else:
        directory = _model_directory(params.model_dir)
        body = _from_directory(directory, num_classes, params.reset_head)
        mean, std = _processor_normalisation(directory)
        source = _directory_source(directory)
    if params.weights:
        file_source = load_weights(body, params.weights)
        source = {**file_source, "base": source} if source else file_source
    config_size = getattr(body.config, "image_size", None)
    input_size = params.input_size or (config_size if isinstance(config_size, int) else None)
    return Network(
        body,
        num_classes=num_classes,
        input_size=input_size,
        mean=mean,
        std=std,
        logits_of=operator.attrgetter("logits"),  # picklable, unlike a lambda
        weights_source=source,
        **hf_taps(body, input_size or image_size),
    )


def _from_hub(params: HfParams, num_classes: int) -> tuple[nn.Module, dict[str, Any]]:
    """``from_pretrained(model_id)`` through the hub cache, a classifier of another size replaced;
    with where it was found (``cache``: the snapshot folder) and the commit it resolved to."""
    model = f"hf model '{params.model_id}'"
    locate_hf(params, download=False)  # offline and not cached: say so before transformers fails
    try:
        body = AutoModelForImageClassification.from_pretrained(
            params.model_id,
            revision=params.revision,
            num_labels=num_classes,
            ignore_mismatched_sizes=True,  # pretrained for another label set: a fresh classifier
            attn_implementation=ATTENTION_IMPLEMENTATION,
            output_attentions=True,
        )
    except (OSError, ValueError) as exc:  # not found, offline, HTTP errors (huggingface_hub's are OSErrors)
        raise KdzooError(f"{model}: cannot load it from the Hugging Face hub: {one_line(exc)}") from exc
    return body, locate_hf(params, download=False)  # now cached: the resolved revision


def _directory_source(directory: Path) -> dict[str, Any] | None:
    """A local save_pretrained directory's weights file, with its sha256, for the manifest."""
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"):
        file = directory / name
        if file.is_file():
            return {"file": str(file.resolve()), "sha256": file_sha256(file)}
    return None


def _from_config(config: dict[str, Any], num_classes: int) -> nn.Module:
    fields = dict(config)
    model_type = fields.pop("model_type")
    if model_type not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        known_types = sorted(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)
        raise unknown_name_error("Hugging Face image-classification model_type", model_type, known_types)
    # for_model accepts any keyword silently; a typo would otherwise build the default size.
    config_class = CONFIG_MAPPING[model_type]
    known = set(config_class().to_dict()) | set(inspect.signature(config_class.__init__).parameters)
    for name in fields:
        if name not in known:
            raise KdzooError(f"hf config: '{model_type}' has no field '{name}'{did_you_mean(name, known)}")
    hf_config = AutoConfig.for_model(model_type, **fields, num_labels=num_classes, output_attentions=True)
    try:
        return AutoModelForImageClassification.from_config(hf_config, attn_implementation=ATTENTION_IMPLEMENTATION)
    except (ValueError, TypeError) as exc:
        raise KdzooError(f"hf config for '{model_type}' cannot build a model: {exc}") from exc


def _model_directory(model_dir: str) -> Path:
    directory = Path(model_dir).expanduser()
    if not directory.is_dir():
        raise KdzooError(f"hf model_dir not found: {directory} (expected a directory written by save_pretrained)")
    return directory


def _from_directory(directory: Path, num_classes: int, reset_head: bool) -> nn.Module:
    try:
        saved = AutoConfig.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise KdzooError(f"hf model_dir {directory} has no readable config.json: {exc}") from exc
    if saved.num_labels != num_classes and not reset_head:
        raise KdzooError(
            f"hf model in {directory} has {saved.num_labels} labels but the dataset has {num_classes} classes; "
            "set reset_head: true to fine-tune it with a new classifier"
        )
    try:
        return AutoModelForImageClassification.from_pretrained(
            directory,
            local_files_only=True,
            num_labels=num_classes,
            ignore_mismatched_sizes=reset_head,
            attn_implementation=ATTENTION_IMPLEMENTATION,
            output_attentions=True,
        )
    except (OSError, ValueError) as exc:
        raise KdzooError(f"cannot load the hf model in {directory}: {exc}") from exc


def _processor_normalisation(directory: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The image_mean / image_std the model was trained with (preprocessor_config.json), else ImageNet's."""
    processor_file = directory / "preprocessor_config.json"
    if processor_file.is_file():
        processor = json.loads(processor_file.read_text())
        mean, std = processor.get("image_mean"), processor.get("image_std")
        if isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3:
            return tuple(mean), tuple(std)
    return IMAGENET_MEAN, IMAGENET_STD


def hf_taps(body: nn.Module, resolution: int) -> dict[str, Any]:
    """stages / embedding / attention / family, matched from the model's own hidden states and attentions."""
    with probing(body), recorded_outputs(body) as records:
        images = probe_images(resolution)
        out = run_probe(
            f"hf model '{body.config.model_type}'",
            resolution,
            lambda: body(images, output_hidden_states=True, output_attentions=True),
        )

    attention = []
    for probs in getattr(out, "attentions", None) or ():
        # (B, heads, N, N) over the whole image; windowed attention (B*windows, ...) is not tapped.
        whole_image = (
            probs is not None
            and probs.ndim == 4
            and probs.shape[0] == images.shape[0]
            and probs.shape[-1] == probs.shape[-2]
        )
        path = (first_producer(records, probs, item=1) or first_producer(records, probs)) if whole_image else None
        if path is None:
            attention = []
            break
        attention.append(path)

    # hidden_states[0] is the embedding / stem output; stages are the blocks after it.
    stage_paths = [last_producer(records, hidden) for hidden in (getattr(out, "hidden_states", None) or ())[1:]]
    stages = stage_paths if stage_paths and all(stage_paths) else []

    embedding = None
    classifier = next(
        (r for r in records if isinstance(r.module, nn.Linear) and r.output is out.logits), None
    )
    if classifier is not None:
        embedding = last_producer(records, classifier.input)
    if embedding is None and stages:
        # HF ViTs slice the class token outside any module: tap the last block's tokens
        # (kdzoo.api.connectors.as_embedding takes the class token of a (B, N, D) tap).
        embedding = stages[-1]

    return {
        "stages": stages,
        "embedding": embedding,
        "attention": attention,
        "family": "vit" if getattr(out, "attentions", None) else "cnn",
    }
