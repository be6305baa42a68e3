"""kdzoo built-in plugin: models (hook module; must stay cheap to import: no torch here).

The params models below are what specs are validated against; the builders live in
modules that import torch and are only imported when a model is built.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kdzoo import hookimpl

KDZOO_PLUGIN_API = (1, 4)  # KdzooError in kdzoo.api (1.1); register(weights=) and Network.weights_source (1.2); cifar-resnet's pre-activation taps (1.4)

CIFAR_RESNET_DEPTHS = (8, 14, 20, 32, 44, 56, 110)  # 6n + 2 with n = 1, 2, 3, 5, 7, 9, 18

WEIGHTS_HELP = (
    "local weights file (.safetensors, or .pt/.pth read with weights_only=True): a state dict "
    "of the model or a kdzoo checkpoint (keys prefixed 'body.')"
)
TORCHVISION_PRETRAINED_HELP = (
    "a torchvision weights name (IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT, ...: the members of "
    "torchvision.models.get_model_weights(arch)), loaded through torchvision's cache (TORCH_HOME); "
    "or true: the local `weights` file holds pretrained weights. Either way a classifier whose "
    "size differs from the dataset's is re-initialised"
)
TIMM_PRETRAINED_HELP = (
    "pretrained weights: with a `weights` file, that file (nothing is downloaded); without, the "
    "weights timm publishes for `arch` (e.g. resnet50.a1_in1k), through the Hugging Face hub cache "
    "(HF_HOME). A classifier whose size differs from the dataset's is re-initialised"
)
# Enum member names: upper case, digits and underscores (checked against the arch when building).
TORCHVISION_WEIGHTS_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
# A hub repository: NAME or ORG/NAME.
HF_REPO_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$"


def _unset(value: Any) -> bool:
    # Fields added later stay out of the resolved params while unset, so that specs written
    # before them keep their resolved form (teacher cache keys, resume and grid-skip checks).
    return value is None


REVISION_HELP = "hub revision to load (a branch, tag or commit hash; default: main); the run records the commit it resolved to"
INPUT_SIZE_HELP = "resize images to this square resolution before the model (default: the dataset's)"


class CifarResNetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    depth: Literal[8, 14, 20, 32, 44, 56, 110] = Field(
        20, description="number of layers, 6n+2: 8, 14, 20, 32, 44, 56 or 110"
    )
    width: int = Field(16, ge=1, le=1024, description="channels of the first stage (doubled in each later stage)")
    weights: str | None = Field(None, min_length=1, description=WEIGHTS_HELP)


class TorchvisionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arch: str = Field("resnet18", min_length=1, description="torchvision classification model name, e.g. resnet50")
    weights: str | None = Field(None, min_length=1, description=WEIGHTS_HELP)
    input_size: int | None = Field(None, ge=8, le=4096, description=INPUT_SIZE_HELP)
    pretrained: bool | str = Field(False, description=TORCHVISION_PRETRAINED_HELP)

    @field_validator("pretrained")
    @classmethod
    def _weights_name(cls, pretrained: bool | str) -> bool | str:
        if isinstance(pretrained, str) and not TORCHVISION_WEIGHTS_NAME.match(pretrained):
            raise ValueError(
                f"pretrained is true, false or a torchvision weights name such as IMAGENET1K_V1 or DEFAULT, "
                f"got '{pretrained}'"
            )
        return pretrained

    @model_validator(mode="after")
    def _one_weights_source(self) -> TorchvisionParams:
        if isinstance(self.pretrained, str) and self.weights is not None:
            raise ValueError(
                f"give either pretrained: {self.pretrained} (torchvision's weights) or a local `weights` file, not both"
            )
        if self.pretrained is True and self.weights is None:
            raise ValueError(
                "pretrained: true means the local `weights` file is pretrained, and none is given; for "
                "torchvision's own weights name them, e.g. pretrained: DEFAULT or pretrained: IMAGENET1K_V1"
            )
        return self


# Set through their own fields (or by kdzoo) so that they are validated and recorded once.
TIMM_RESERVED_KWARGS = ("num_classes", "img_size", "patch_size", "pretrained", "pretrained_cfg_overlay")


class TimmParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arch: str = Field("resnet18", min_length=1, description="timm model name, e.g. resnet50 or vit_small_patch16_224")
    img_size: int | None = Field(None, ge=8, le=4096, description="image size the model is built for (ViT-like models)")
    patch_size: int | None = Field(None, ge=1, le=1024, description="patch size (ViT-like models)")
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra keyword arguments for timm.create_model, e.g. {depth: 6}"
    )
    weights: str | None = Field(None, min_length=1, description=WEIGHTS_HELP)
    input_size: int | None = Field(
        None, ge=8, le=4096, description=INPUT_SIZE_HELP + "; img_size, or a ViT's built-in size, when not set"
    )
    pretrained: bool = Field(False, description=TIMM_PRETRAINED_HELP)
    revision: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        exclude_if=_unset,
        description="with hub weights (pretrained, no `weights` file): " + REVISION_HELP,
    )

    @model_validator(mode="after")
    def _revision_of_hub_weights(self) -> TimmParams:
        if self.revision is not None and (not self.pretrained or self.weights is not None):
            raise ValueError("revision pins hub weights: it needs pretrained: true and no local `weights` file")
        return self

    @field_validator("kwargs")
    @classmethod
    def _no_reserved_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        reserved = [key for key in kwargs if key in TIMM_RESERVED_KWARGS]
        if reserved:
            raise ValueError(
                f"{', '.join(reserved)} cannot be set in kwargs: use the model's own fields "
                "(num_classes always comes from the dataset)"
            )
        return kwargs


HF_SOURCES = ("model_id", "model_dir", "config")
# Derived from the dataset by kdzoo; a value in a config would silently disagree with it.
HF_RESERVED_CONFIG_KEYS = ("num_labels", "id2label", "label2id")


class HfParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_dir: str | None = Field(
        None, min_length=1, description="local directory written by save_pretrained (config.json + weights)"
    )
    model_id: str | None = Field(
        None,
        pattern=HF_REPO_ID,
        max_length=200,
        exclude_if=_unset,
        description="a Hugging Face hub repository, e.g. google/vit-base-patch16-224, loaded with from_pretrained "
        "through the hub cache (HF_HOME); a classifier whose size differs from the dataset's is replaced",
    )
    revision: str | None = Field(
        None, min_length=1, max_length=200, exclude_if=_unset, description="with model_id: " + REVISION_HELP
    )
    config: dict[str, Any] | None = Field(
        None,
        description="config of a randomly initialised model: model_type plus its fields, e.g. "
        "{model_type: vit, image_size: 32, patch_size: 4, hidden_size: 192}",
    )
    weights: str | None = Field(None, min_length=1, description=WEIGHTS_HELP + "; loaded after building")
    input_size: int | None = Field(
        None, ge=8, le=4096, description=INPUT_SIZE_HELP + "; the config's image_size when not set"
    )
    reset_head: bool = Field(
        False,
        description="with model_dir: re-initialise the classifier when the saved model has a different number "
        "of labels than the dataset (otherwise that is an error)",
    )

    @field_validator("config")
    @classmethod
    def _config_names_a_model_type(cls, config: dict[str, Any] | None) -> dict[str, Any] | None:
        if config is None:
            return None
        if not isinstance(config.get("model_type"), str):
            raise ValueError("config needs a 'model_type' string, e.g. 'vit'")
        reserved = [key for key in config if key in HF_RESERVED_CONFIG_KEYS]
        if reserved:
            raise ValueError(f"{', '.join(reserved)} cannot be set: the number of labels comes from the dataset")
        return config

    @model_validator(mode="after")
    def _at_most_one_source(self) -> HfParams:
        # "Exactly one" is checked when building: the all-defaults params must stay valid.
        given = [name for name in HF_SOURCES if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of {', '.join(HF_SOURCES)}, not {' and '.join(given)}")
        if self.revision is not None and self.model_id is None:
            raise ValueError("revision is the version of a hub model: it needs model_id")
        return self


@hookimpl
def register_models(register):
    register(
        "cifar-resnet",
        "kdzoo_models.cifar_resnet:build_cifar_resnet",
        params=CifarResNetParams,
        description="CIFAR-style ResNet-(6n+2) with 3 stages of basic blocks (He et al., 2016)",
    )
    register(
        "torchvision",
        "kdzoo_models.torchvision_models:build_torchvision",
        params=TorchvisionParams,
        description="any torchvision classification model by name: random, torchvision's pretrained weights or a local file",
        weights="kdzoo_models.torch_hub:locate_torchvision",
    )
    register(
        "timm",
        "kdzoo_models.timm_models:build_timm",
        params=TimmParams,
        description="any timm model by name (CNNs and ViTs): random, pretrained from the hub or from a local file",
        weights="kdzoo_models.hub:locate_timm",
    )
    register(
        "hf",
        "kdzoo_models.hf_models:build_hf",
        params=HfParams,
        description="Hugging Face transformers image classifier: from the hub (model_id), a local directory or a config",
        weights="kdzoo_models.hub:locate_hf",
    )
