"""timm models by name; taps are found with one probe forward through timm's standard API."""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import Tensor, nn

from kdzoo.api import IMAGENET_MEAN, IMAGENET_STD, CamHead, Network
from kdzoo.api import KdzooError
from kdzoo_models import TimmParams
from kdzoo_models.common import (
    gap_linear_matches,
    last_producer,
    probe_images,
    probing,
    recorded_outputs,
    run_probe,
    unknown_name_error,
)
from kdzoo_models.hub import locate_timm, manifest_source, one_line, timm_pretrained_source
from kdzoo_models.weights import load_weights


def build_timm(params: TimmParams, *, num_classes: int, image_size: int) -> Network:
    """A timm model -- Wightman, "PyTorch Image Models", GitHub 2019, doi:10.5281/zenodo.4414861."""
    if not timm.is_model(params.arch):
        raise unknown_name_error("timm model", params.arch, timm.list_models(), hint=" (see timm.list_models())")
    kwargs = dict(params.kwargs)
    if params.img_size is not None:
        kwargs["img_size"] = params.img_size
    if params.patch_size is not None:
        kwargs["patch_size"] = params.patch_size
    from_hub = params.pretrained and not params.weights
    if from_hub:
        locate_timm(params, download=False)  # offline and not cached: say so before timm fails
        if params.revision is not None:
            kind, location, _ = timm_pretrained_source(params.arch)
            if kind == "hf-hub":
                kwargs["pretrained_cfg_overlay"] = {"hf_hub_id": f"{location.partition('@')[0]}@{params.revision}"}
    try:
        # With pretrained=True timm loads through its own hub code (the Hugging Face cache) and
        # drops a classifier of another size than num_classes, which keeps its fresh init.
        body = timm.create_model(params.arch, pretrained=from_hub, num_classes=num_classes, **kwargs)
    except TypeError as exc:  # a keyword the model's constructor does not take
        raise KdzooError(f"timm model '{params.arch}' rejected its arguments {sorted(kwargs)}: {exc}") from exc
    except (OSError, RuntimeError, ValueError) as exc:  # download, offline cache or checkpoint problems
        if not from_hub:
            raise
        raise KdzooError(f"timm model '{params.arch}': cannot load its pretrained weights: {one_line(exc)}") from exc
    source = None
    if params.weights:
        head = classifier_paths(body) if params.pretrained else []
        source = load_weights(body, params.weights, replaceable_head=head)
    elif from_hub:
        source = manifest_source(locate_timm(params, download=False))  # now cached: the resolved revision
    input_size = params.input_size or params.img_size or fixed_input_size(body)
    cfg = body.pretrained_cfg or {}
    return Network(
        body,
        num_classes=num_classes,
        input_size=input_size,
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        weights_source=source,
        **timm_taps(body, input_size or image_size, params.arch),
    )


def classifier_paths(body: nn.Module) -> list[str]:
    """Module paths of the classifier(s), as timm's pretrained config names them."""
    named = (body.pretrained_cfg or {}).get("classifier") or []
    named = [named] if isinstance(named, str) else list(named)
    return [path for path in named if _resolves(body, path)]


def fixed_input_size(body: nn.Module) -> int | None:
    """The resolution a patch-embedding model was built for, when it accepts no other (ViTs)."""
    patch_embed = getattr(body, "patch_embed", None)
    if patch_embed is None or getattr(body, "dynamic_img_size", False):
        return None
    if not getattr(patch_embed, "strict_img_size", False):
        return None
    height, width = getattr(patch_embed, "img_size", (None, None))
    return height if height == width else None


def _resolves(body: nn.Module, path: str) -> bool:
    try:
        body.get_submodule(path)
    except AttributeError:
        return False
    return True


def _vit_attention_modules(body: nn.Module) -> dict[str, nn.Module]:
    """``blocks.{i}.attn`` of ViT-like models whose non-fused path puts the probabilities through attn_drop."""
    blocks = getattr(body, "blocks", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or len(blocks) == 0:
        return {}
    found = {}
    for i, block in enumerate(blocks):
        attn = getattr(block, "attn", None)
        tappable = hasattr(attn, "fused_attn") and isinstance(getattr(attn, "attn_drop", None), nn.Dropout)
        if not tappable:
            return {}  # all blocks or none: a partial attention list would mislabel depth
        found[f"blocks.{i}.attn"] = attn
    return found


def _is_attention_probs(out: Any) -> bool:
    if not isinstance(out, Tensor) or out.ndim != 4 or out.shape[-1] != out.shape[-2]:
        return False
    row_sums = out.sum(-1)
    return torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-3)


def timm_taps(body: nn.Module, resolution: int, arch: str) -> dict[str, Any]:
    """stages / embedding / cam / attention / family from one probe forward at ``resolution``."""
    attention_modules = _vit_attention_modules(body)
    for attn in attention_modules.values():
        attn.fused_attn = False  # the explicit softmax path, whose probabilities pass through attn_drop
    attention = [f"{path}.attn_drop" for path in attention_modules]

    with probing(body), recorded_outputs(body) as records:
        images = probe_images(resolution)
        features = run_probe(f"timm model '{arch}'", resolution, lambda: body.forward_features(images))
        logits = body.forward_head(features)
    outputs = {record.path: record.output for record in records}
    inputs = {record.path: record.input for record in records}

    if not all(_is_attention_probs(outputs.get(path)) for path in attention):
        for attn in attention_modules.values():
            attn.fused_attn = True  # not the layout we can tap: keep the fast kernel
        attention = []

    is_transformer = bool(attention) or any(hasattr(m, "fused_attn") for m in body.modules())
    channels_last = getattr(body, "output_fmt", "NCHW") != "NCHW"  # e.g. Swin: NHWC maps

    if attention:
        stages = [path.removesuffix(".attn") for path in attention_modules]  # blocks.{i}: (B, N, D) tokens
    elif channels_last:
        stages = []
    else:
        # feature_info also lists the stem (reduction 2); stages start at stride 4.
        stages = [
            info["module"]
            for info in getattr(body, "feature_info", [])
            if info.get("reduction", 0) >= 4 and isinstance(outputs.get(info["module"]), Tensor)
        ]

    heads = classifier_paths(body)
    # The pooled penultimate features: whatever module hands the classifier its input.
    embedding = last_producer(records, inputs.get(heads[0])) if heads else None

    cam = None
    if not is_transformer and not channels_last and len(heads) == 1:
        features_path = last_producer(records, features)
        if features_path and gap_linear_matches(features, body.get_submodule(heads[0]), logits):
            cam = CamHead(features=features_path, classifier=heads[0])

    return {
        "stages": stages,
        "embedding": embedding,
        "cam": cam,
        "attention": attention,
        "family": "vit" if is_transformer else "cnn",
    }
