"""``imagefolder``: ``root/<class>/<image>`` trees decoded once into uint8 tensors.

Decoding (every file to 8-bit RGB, bad files named) lives in ``kdzoo_data.decoding``.
The decoded split is cached as a safetensors file keyed by the resolved root, every
file's relative path, size and mtime, and the target size, so a second load reads one
file instead of decoding again. A one-class dataset builds, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from kdzoo.api import ImageData
from kdzoo.api import KdzooError
from kdzoo_data.decoding import decode_images

# torchvision's ImageFolder extensions, matched case-insensitively as it does.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CACHE_FORMAT = 2  # bump when the cached tensors' meaning changes (2: 16-bit images scaled, no longer wrapped)


@dataclass
class FolderListing:
    """The files of one ImageFolder split, sorted by class then path (torchvision's order)."""

    root: Path
    classes: list[str]
    files: list[Path]
    labels: list[int]
    stamps: list[tuple[str, int, int]]  # (path relative to root, size, mtime_ns): the cache key

    def cache_key(self, image_size: int | None) -> str:
        payload = json.dumps(
            {"format": CACHE_FORMAT, "root": str(self.root), "image_size": image_size, "files": self.stamps},
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode()).hexdigest()


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_image_folder(root: Path) -> FolderListing:
    """Classes (sorted sub-folder names) and their image files; KdzooError for a missing or empty tree."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise KdzooError(f"image folder {root} does not exist or is not a directory")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise KdzooError(f"image folder {root} has no class folders (expected {root}/<class>/<image>)")
    files, labels, stamps = [], [], []
    for label, name in enumerate(classes):
        class_files = list(_walk_images(root / name))
        if not class_files:
            raise KdzooError(f"class folder {root / name} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
        for path, stat in class_files:
            files.append(path)
            labels.append(label)
            stamps.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return FolderListing(root, classes, files, labels, stamps)


def _walk_images(class_dir: Path) -> Iterator[tuple[Path, os.stat_result]]:
    # The same traversal as torchvision's make_dataset: sorted walk, links followed.
    for dirpath, _, filenames in sorted(os.walk(class_dir, followlinks=True)):
        for filename in sorted(filenames):
            if is_image_file(filename):
                path = Path(dirpath) / filename
                yield path, path.stat()


# --------------------------------------------------------------------------- caching
def cached_tensors(cache_file: Path | None, build) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and string metadata from ``cache_file``, or from ``build()`` and then saved there.

    ``cache_file`` None disables caching. The file is written to a temporary name and
    renamed, so an interrupted run never leaves a truncated cache behind.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import save_file

    if cache_file is not None and cache_file.is_file():
        try:
            with safe_open(str(cache_file), framework="pt") as handle:
                return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata() or {}
        except (SafetensorError, OSError):
            pass  # unreadable cache (for example a different safetensors version): rebuild it
    tensors, metadata = build()
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.partial")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial), metadata=metadata)
        os.replace(partial, cache_file)
    return tensors, metadata


def load_split(root: Path, *, image_size: int | None, cache_dir: Path | None) -> tuple[Tensor, Tensor, list[str]]:
    """Images, labels and classes of one ImageFolder split (``cache_dir`` None: no cache)."""
    listing = list_image_folder(root)
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / "imagefolder" / f"{listing.root.name}-{listing.cache_key(image_size)[:32]}.safetensors"

    def decode() -> tuple[dict[str, Tensor], dict[str, str]]:
        blobs = ((str(path), path.read_bytes()) for path in listing.files)
        images = decode_images(blobs, len(listing.files), image_size)
        labels = torch.tensor(listing.labels, dtype=torch.int64)
        return {"images": images, "labels": labels}, {"classes": json.dumps(listing.classes), "root": str(listing.root)}

    tensors, _ = cached_tensors(cache_file, decode)
    return tensors["images"], tensors["labels"], listing.classes


def check_splits_agree(name: str, train_classes: list[str], test_classes: list[str], train_images: Tensor, test_images: Tensor, where: str) -> None:
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise KdzooError(f"{name}: train and test class folders differ ({where}): only in train {only_train}, only in test {only_test}")
    if train_images.shape[1:] != test_images.shape[1:]:
        raise KdzooError(
            f"{name}: train images are {tuple(train_images.shape[2:])} but test images {tuple(test_images.shape[2:])} ({where}): "
            "set params.image_size"
        )


def warn_if_single_class(name: str, classes: list[str], where: str) -> None:
    """A warning (not an error: a pipeline smoke test may want it) for a one-class dataset."""
    if len(classes) == 1:
        warnings.warn(
            f"{name}: only one class ('{classes[0]}') in {where}: with one class every prediction is right, "
            "so accuracy and distillation are meaningless; add a folder per class",
            UserWarning,
            stacklevel=3,
        )


def build_imagefolder(params, *, seed: int = 0, cache_dir: Path | None = None) -> ImageData:
    """Two ``<root>/<class>/<image>`` trees (train and test) as uint8 tensors, cached as safetensors.

    Classes are the sorted sub-folder names, as in torchvision's ImageFolder; the test
    tree must have the same class folders.
    """
    if params.train_root is None or params.test_root is None:
        raise KdzooError("imagefolder needs params.train_root and params.test_root (folders of <class>/<image> files)")
    folder_cache = cache_dir if params.cache else None
    train_images, train_labels, classes = load_split(params.train_root, image_size=params.image_size, cache_dir=folder_cache)
    test_images, test_labels, test_classes = load_split(params.test_root, image_size=params.image_size, cache_dir=folder_cache)
    check_splits_agree("imagefolder", classes, test_classes, train_images, test_images, f"{params.train_root} vs {params.test_root}")
    warn_if_single_class("imagefolder", classes, str(params.train_root))
    return ImageData(train_images, train_labels, test_images, test_labels, classes, name="imagefolder")
