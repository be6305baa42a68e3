"""kdzoo built-in plugin: data (hook module; must stay cheap to import: no torch here).

Datasets return decoded uint8 tensors (``kdzoo.api.ImageData``); augmentations map a
uint8 batch to a uint8 batch with per-image randomness drawn from a ``torch.Generator``.
The implementations live in the sibling modules the factory strings name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from kdzoo import hookimpl

KDZOO_PLUGIN_API = (1, 0)

# The shape classes of ``synthetic-shapes`` in label order (kept here, torch-free, so the
# params model can bound ``num_classes``; kdzoo_data.synthetic draws each one).
SHAPE_KINDS = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "horizontal-bar",
    "vertical-bar",
    "diamond",
    "plus",
    "ellipse",
    "half-disc",
    "star",
    "frame",
    "arrow",
)


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- datasets
class SyntheticShapesParams(_Params):
    num_classes: int = Field(10, ge=2, le=len(SHAPE_KINDS), description=f"number of shape classes, taken in order from: {', '.join(SHAPE_KINDS)}")
    train_size: int = Field(5000, ge=2, description="training images (classes balanced)")
    test_size: int = Field(1000, ge=2, description="test images (classes balanced)")
    image_size: int = Field(32, ge=16, le=512, description="image side in pixels")
    clutter: float = Field(0.5, ge=0.0, le=1.0, description="background clutter strength: 0 = smooth background, 1 = heavy noise and line clutter")
    seed: int = Field(0, ge=0, description="generation seed; the data depend on this only, not on the run seed")

    @model_validator(mode="after")
    def _every_class_fits(self) -> SyntheticShapesParams:
        for split in ("train_size", "test_size"):
            if getattr(self, split) < self.num_classes:
                raise ValueError(f"{split} ({getattr(self, split)}) must be at least num_classes ({self.num_classes}) so every class is present")
        return self


def _check_existing(path: Path | None, kind: Literal["folder", "file"], hint: str = "") -> Path | None:
    """``path`` unchanged if it exists as a ``kind``; else ValueError saying what is wrong.

    Relative paths mean what they mean when the data are read: relative to the working
    directory (the message shows where that points). The value is kept as written, so
    the resolved spec records the path the user gave.
    """
    if path is None:
        return None
    full = path.expanduser()
    where = "" if full.is_absolute() else f" (relative to the working directory: {full.absolute()})"
    if not full.exists():
        raise ValueError(f"{kind} {path} does not exist{where}{hint}")
    if kind == "folder" and not full.is_dir():
        raise ValueError(f"{path} is a file, not a folder{where}{hint}")
    if kind == "file" and full.is_dir():
        raise ValueError(f"{path} is a folder, not a file{where}{hint}")
    return path


class ImageFolderParams(_Params):
    train_root: Path | None = Field(None, description="training split: a folder of <class>/<image> files (required)")
    test_root: Path | None = Field(None, description="test split, same class folders as train_root (required)")
    image_size: int | None = Field(None, ge=8, le=1024, description="resize the shorter side to this and centre-crop a square; required when image sizes differ")
    cache: bool = Field(True, description="keep the decoded tensors as a safetensors file under the cache dir (keyed by files, mtimes and image_size)")

    @field_validator("train_root", "test_root")
    @classmethod
    def _root_exists(cls, root: Path | None) -> Path | None:
        return _check_existing(root, "folder", "; expected a folder of <class>/<image> files")


class Cifar10JpgParams(_Params):
    archive: Path | None = Field(None, description="a cifar10-jpg.tar.gz (cifar10/{train,test}/<class>/NNNN.jpg); read directly, never unpacked into the repo")
    root: Path | None = Field(None, description="an unpacked copy: the folder holding train/ and test/ (or its parent holding cifar10/)")
    image_size: int | None = Field(None, ge=8, le=1024, description="resize the shorter side and centre-crop (default: keep 32 px)")
    cache: bool = Field(True, description="keep the decoded tensors as a safetensors file under the cache dir")

    @field_validator("archive")
    @classmethod
    def _archive_exists(cls, archive: Path | None) -> Path | None:
        return _check_existing(archive, "file", "; expected a cifar10-jpg.tar.gz (an unpacked copy goes in root)")

    @field_validator("root")
    @classmethod
    def _root_exists(cls, root: Path | None) -> Path | None:
        return _check_existing(root, "folder", "; expected the folder holding train/ and test/ (or its parent holding cifar10/)")

    @model_validator(mode="after")
    def _one_source(self) -> Cifar10JpgParams:
        if self.root is not None and self.archive is not None:
            raise ValueError("give root or archive, not both")
        return self


class TorchvisionCifarParams(_Params):
    # download comes first: root's check reads it (a root that download will create may be missing).
    download: bool = Field(False, description="download into root when missing (needs network)")
    root: Path | None = Field(None, description="folder holding the torchvision CIFAR python archive contents (default: <cache dir>/<dataset>)")

    @field_validator("root")
    @classmethod
    def _root_exists(cls, root: Path | None, info: ValidationInfo) -> Path | None:
        if info.data.get("download"):
            return root
        return _check_existing(root, "folder", "; pass download: true to fetch the data into it, or root: a folder that holds them")


# --------------------------------------------------------------------------- augmentations
class _CropFlipFields(_Params):
    padding: int = Field(4, ge=0, le=64, description="pixels padded on each side before the random crop back to the input size")
    padding_mode: Literal["reflect", "zeros"] = Field("reflect", description="how the padding is filled")
    flip_prob: float = Field(0.5, ge=0.0, le=1.0, description="probability of a horizontal flip")


class _CutoutFields(_Params):
    holes: int = Field(1, ge=0, le=16, description="square holes erased per image")
    size: int = Field(16, ge=1, le=1024, description="hole side in pixels (clipped at the border; the centre can be anywhere)")
    fill: int = Field(0, ge=0, le=255, description="value written into the holes (DeVries & Taylor erased normalised images, i.e. to the mean colour; 0 is black)")


class _ChunkFields(_Params):
    chunk_size: int = Field(16, ge=1, le=4096, description="images that share one torchvision policy draw (1 = fully per image, slower)")


class _ResizedCropFields(_Params):
    scale_min: float = Field(0.2, gt=0.0, le=1.0, description="smallest crop area as a fraction of the image")
    scale_max: float = Field(1.0, gt=0.0, le=1.0, description="largest crop area as a fraction of the image")
    ratio_min: float = Field(3 / 4, gt=0.0, description="smallest crop aspect ratio (width / height)")
    ratio_max: float = Field(4 / 3, gt=0.0, description="largest crop aspect ratio (width / height)")
    flip_prob: float = Field(0.5, ge=0.0, le=1.0, description="probability of a horizontal flip")

    @model_validator(mode="after")
    def _ranges_ordered(self):
        if self.scale_min > self.scale_max:
            raise ValueError(f"scale_min ({self.scale_min}) must not exceed scale_max ({self.scale_max})")
        if self.ratio_min > self.ratio_max:
            raise ValueError(f"ratio_min ({self.ratio_min}) must not exceed ratio_max ({self.ratio_max})")
        return self


class WeakParams(_CropFlipFields):
    pass


class CutoutParams(_CutoutFields):
    pass


class AutoAugmentParams(_ChunkFields):
    policy: Literal["cifar10", "imagenet", "svhn"] = Field("cifar10", description="which learned AutoAugment policy")


class StrongParams(_CropFlipFields, _CutoutFields, _ChunkFields):
    pass


class RandAugmentParams(_CropFlipFields, _ChunkFields):
    num_ops: int = Field(2, ge=0, le=14, description="operations applied per image (N)")
    magnitude: int = Field(9, ge=0, le=30, description="strength of every operation (M, 0-30): the knob a strength sweep turns")


class PaperWeakParams(_ResizedCropFields):
    max_rotation: float = Field(15.0, ge=0.0, le=180.0, description="rotation drawn uniformly in +-max_rotation degrees")


class PaperStrongParams(_ResizedCropFields, _CutoutFields, _ChunkFields):
    pass


# --------------------------------------------------------------------------- hooks
@hookimpl
def register_datasets(register):
    register("synthetic-shapes", "kdzoo_data.synthetic:build_synthetic_shapes", params=SyntheticShapesParams,
             description="coloured shapes on cluttered backgrounds with object masks, generated offline from a seed")
    register("imagefolder", "kdzoo_data.imagefolder:build_imagefolder", params=ImageFolderParams,
             description="root/<class>/<image> folders decoded to uint8 tensors, cached as safetensors")
    register("cifar10-jpg", "kdzoo_data.cifar:build_cifar10_jpg", params=Cifar10JpgParams,
             description="CIFAR-10 as JPEGs from cifar10-jpg.tar.gz or an unpacked copy (env KDZOO_CIFAR10_JPG)")
    register("cifar10", "kdzoo_data.cifar:build_cifar10", params=TorchvisionCifarParams,
             description="torchvision CIFAR-10 (python version)")
    register("cifar100", "kdzoo_data.cifar:build_cifar100", params=TorchvisionCifarParams,
             description="torchvision CIFAR-100 (python version)")


@hookimpl
def register_augmentations(register):
    register("none", "kdzoo_data.augment:build_none", description="identity: images pass unchanged")
    register("weak", "kdzoo_data.augment:build_weak", params=WeakParams,
             description="padded random crop + horizontal flip (the standard CIFAR policy)")
    register("strong", "kdzoo_data.augment:build_strong", params=StrongParams,
             description="weak + AutoAugment CIFAR-10 policy (Cubuk 2019) + Cutout (DeVries 2017)")
    register("randaugment", "kdzoo_data.augment:build_randaugment", params=RandAugmentParams,
             description="weak + RandAugment (Cubuk 2020); magnitude is the strength knob")
    register("paper-weak", "kdzoo_data.augment:build_paper_weak", params=PaperWeakParams,
             description="the study's weak policy: random resized crop + flip + rotation up to 15 degrees")
    register("paper-strong", "kdzoo_data.augment:build_paper_strong", params=PaperStrongParams,
             description="the study's strong policy: random resized crop + flip + AutoAugment CIFAR-10 + Cutout")
    register("cutout", "kdzoo_data.augment:build_cutout", params=CutoutParams,
             description="Cutout alone: erase square holes at random positions (DeVries 2017)")
    register("autoaugment", "kdzoo_data.augment:build_autoaugment", params=AutoAugmentParams,
             description="AutoAugment alone with a learned policy (Cubuk 2019)")
