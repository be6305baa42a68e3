"""torchvision classification models by name, with kdzoo's taps filled in per model family."""

from __future__ import annotations

import pickle
import re
from typing import Any

import torchvision
from torch import nn
from torchvision import models as tvm

from kdzoo.api import IMAGENET_MEAN, IMAGENET_STD, CamHead, KdzooError, Network
from kdzoo_models import TorchvisionParams
from kdzoo_models.common import last_per_resolution, unknown_name_error
from kdzoo_models.hub import manifest_source, one_line
from kdzoo_models.torch_hub import locate_torchvision, locate_url, torchvision_weights, weights_id
from kdzoo_models.weights import load_state, load_weights, with_metadata

# Auxiliary heads make training-mode outputs tuples; kdzoo distils the main head only.
CONSTRUCTOR_OVERRIDES: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
# Their ImageNet weights were trained on inputs the model re-normalises itself (what torchvision sets).
PRETRAINED_OVERRIDES: dict[str, dict[str, Any]] = {
    "googlenet": {"transform_input": True},
    "inception_v3": {"transform_input": True},
}
AUX_HEAD_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")
DENSENET_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def classification_arches() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models)


def build_torchvision(params: TorchvisionParams, *, num_classes: int, image_size: int) -> Network:
    """A torchvision model -- Marcel & Rodriguez, "Torchvision the machine-vision package of Torch", ACM MM 2010."""
    arches = classification_arches()
    if params.arch not in arches:
        raise unknown_name_error("torchvision model", params.arch, arches)
    hub_weights = torchvision_weights(params.arch, params.pretrained) if isinstance(params.pretrained, str) else None
    input_size = params.input_size
    kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes, **CONSTRUCTOR_OVERRIDES.get(params.arch, {})}
    if hub_weights is not None:
        kwargs.update(PRETRAINED_OVERRIDES.get(params.arch, {}))
        input_size = _pretrained_input_size(params, hub_weights)
    resolution = input_size or image_size
    if params.arch.startswith("vit_"):
        kwargs["image_size"] = resolution  # its position embeddings are built for one resolution
    body = tvm.get_model(params.arch, **kwargs)
    source = None
    if hub_weights is not None:
        source = _load_torchvision_weights(body, params, hub_weights)
    elif params.weights:
        head = [final_layer_path(body)] if params.pretrained else []
        source = load_weights(body, params.weights, replaceable_head=head)
    return Network(
        body,
        num_classes=num_classes,
        input_size=input_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights_source=source,
        **torchvision_taps(body, resolution),
    )


def _pretrained_input_size(params: TorchvisionParams, weights: Any) -> int | None:
    """ViT weights fit one resolution (their position embeddings): the weights', unless input_size says another."""
    if not params.arch.startswith("vit_"):
        return params.input_size
    size = weights.meta["min_size"][0]
    if params.input_size not in (None, size):
        raise KdzooError(
            f"torchvision model '{params.arch}': weights {weights_id(weights)} are for {size}x{size} images; "
            f"set input_size to {size} or leave it unset (got {params.input_size})"
        )
    return size


def _load_torchvision_weights(body: nn.Module, params: TorchvisionParams, weights: Any) -> dict[str, Any]:
    """Load a torchvision weights enum member into ``body`` through torchvision's cache, the classifier
    replaced when its size differs; returns what the manifest records (enum, URL, sha256)."""
    model = f"torchvision model '{params.arch}'"
    locate_torchvision(params, download=False)  # offline and not cached: say so before torch tries to download
    try:
        # weights_only: the cached file is unpickled as tensors only, whoever put it there.
        state = weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise KdzooError(f"{model}: cannot load weights {weights_id(weights)} ({weights.url}): {one_line(exc)}") from exc
    state = _torchvision_state_fixes(params.arch, state)
    load_state(body, state, weights_id(weights), replaceable_head=[final_layer_path(body)])
    # Now cached: the manifest gets the file's sha256.
    return manifest_source(locate_url(model, weights.url, download=False, hub="torchvision", weights_id=weights_id(weights)))


def _torchvision_state_fixes(arch: str, state: dict[str, Any]) -> dict[str, Any]:
    """What torchvision's own builders do to a state dict before loading it."""
    fixed = state
    if arch.startswith("densenet"):
        # Old checkpoints name layers 'norm.1'; torchvision renames them on load (densenet._load_state_dict).
        fixed = {DENSENET_OLD_KEY.sub(r"\1\2", key): value for key, value in fixed.items()}
    if arch in CONSTRUCTOR_OVERRIDES:
        # Built without auxiliary heads (see CONSTRUCTOR_OVERRIDES): their weights have no place.
        fixed = {key: value for key, value in fixed.items() if not key.startswith(AUX_HEAD_PREFIXES)}
    return with_metadata(fixed, state)


def final_layer_path(body: nn.Module) -> str:
    """Path of the last module with its own parameters: the logits layer in torchvision models."""
    with_params = [path for path, m in body.named_modules() if path and any(True for _ in m.parameters(recurse=False))]
    return with_params[-1]


def _last_linear_index(sequential: nn.Module) -> int | None:
    if not isinstance(sequential, nn.Sequential):
        return None
    linear = [i for i, m in enumerate(sequential) if isinstance(m, nn.Linear)]
    return linear[-1] if linear else None


def _classifier_input(body: nn.Module, path: str = "classifier") -> str | None:
    """The child feeding the last Linear of a Sequential head, skipping dropouts (penultimate features)."""
    head = getattr(body, path, None)
    last = _last_linear_index(head) if head is not None else None
    if last is None:
        return None
    for i in range(last - 1, -1, -1):
        if not isinstance(head[i], nn.Dropout):
            return f"{path}.{i}"
    return None


def _linear_head_cam(body: nn.Module, features: str, head: str = "classifier") -> CamHead | None:
    """CAM for trunks followed by global average pooling and (Dropout, Linear)."""
    sequential = getattr(body, head)
    last = _last_linear_index(sequential)
    if last is None or any(not isinstance(m, nn.Dropout) for m in list(sequential)[:last]):
        return None
    return CamHead(features=features, classifier=f"{head}.{last}")


def torchvision_taps(body: nn.Module, resolution: int) -> dict[str, Any]:
    """stages / embedding / cam / family for the torchvision families; unknown layouts get none."""
    if isinstance(body, tvm.ResNet):
        return {
            "stages": ["layer1", "layer2", "layer3", "layer4"],
            "embedding": "avgpool",
            "cam": CamHead(features="layer4", classifier="fc"),
        }
    if isinstance(body, tvm.RegNet):
        return {
            "stages": [f"trunk_output.{name}" for name, _ in body.trunk_output.named_children()],
            "embedding": "avgpool",
            "cam": CamHead(features="trunk_output", classifier="fc"),
        }
    if isinstance(body, tvm.ShuffleNetV2):
        return {"stages": ["stage2", "stage3", "stage4"], "cam": CamHead(features="conv5", classifier="fc")}
    if isinstance(body, tvm.GoogLeNet):
        return {
            "stages": ["inception3b", "inception4e", "inception5b"],
            "embedding": "avgpool",
            "cam": CamHead(features="inception5b", classifier="fc"),
        }
    if isinstance(body, tvm.Inception3):
        return {
            "stages": ["Mixed_5d", "Mixed_6e", "Mixed_7c"],
            "embedding": "avgpool",
            "cam": CamHead(features="Mixed_7c", classifier="fc"),
        }
    if isinstance(body, tvm.VisionTransformer):
        # Its nn.MultiheadAttention is called with need_weights=False: no attention probabilities to tap.
        blocks = [f"encoder.layers.{name}" for name, _ in body.encoder.layers.named_children()]
        return {"stages": blocks, "family": "vit"}
    if isinstance(body, tvm.SwinTransformer):
        return {"embedding": "flatten", "family": "vit"}  # stage outputs are NHWC: not offered as stages
    if isinstance(body, tvm.MaxVit):
        return {"family": "vit"}
    if isinstance(body, tvm.MNASNet):
        return {
            "stages": last_per_resolution(body, "layers", resolution),
            "cam": _linear_head_cam(body, "layers"),
        }
    if isinstance(getattr(body, "features", None), nn.Sequential):
        # MobileNet, EfficientNet, DenseNet, VGG, AlexNet, SqueezeNet, ConvNeXt
        taps: dict[str, Any] = {"stages": last_per_resolution(body, "features", resolution)}
        taps["embedding"] = _classifier_input(body) or ("avgpool" if hasattr(body, "avgpool") else None)
        if isinstance(body, (tvm.MobileNetV2, tvm.EfficientNet)):
            taps["cam"] = _linear_head_cam(body, "features")
        return taps
    return {}
