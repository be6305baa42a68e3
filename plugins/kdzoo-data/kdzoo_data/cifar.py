"""CIFAR datasets: ``cifar10-jpg`` (the JPEG archive or tree) and torchvision's ``cifar10`` / ``cifar100``."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import torch
from torch import Tensor

from kdzoo.api import ImageData
from kdzoo.api import KdzooError
from kdzoo_data.imagefolder import (
    CACHE_FORMAT, cached_tensors, check_splits_agree, decode_images, is_image_file, load_split, warn_if_single_class,
)

CIFAR10_JPG_ENV = "KDZOO_CIFAR10_JPG"
SPLITS = ("train", "test")


# --------------------------------------------------------------------------- cifar10-jpg
def build_cifar10_jpg(params, *, seed: int = 0, cache_dir: Path | None = None) -> ImageData:
    """CIFAR-10 as JPEGs (``cifar10/{train,test}/<class>/NNNN.jpg``), from an archive or an unpacked tree.

    The source is ``params.root``, else ``params.archive``, else ``$KDZOO_CIFAR10_JPG``
    (a folder or an archive). An archive is read member by member and decoded straight
    into the cache (one safetensors file under the cache dir); it is never unpacked, so
    60,000 small files are never written anywhere.
    """
    if params.root is not None and params.archive is not None:
        raise KdzooError("cifar10-jpg: give params.root or params.archive, not both")
    folder_cache = cache_dir if params.cache else None
    if params.root is not None:
        return _from_tree(Path(params.root), params.image_size, folder_cache, "params.root")
    if params.archive is not None:
        return _from_archive(Path(params.archive), params.image_size, folder_cache, "params.archive")
    from_env = os.environ.get(CIFAR10_JPG_ENV)
    if from_env:
        source = Path(from_env).expanduser()
        if source.is_dir():
            return _from_tree(source, params.image_size, folder_cache, f"${CIFAR10_JPG_ENV}")
        return _from_archive(source, params.image_size, folder_cache, f"${CIFAR10_JPG_ENV}")
    raise KdzooError(
        "cifar10-jpg needs its data: set params.archive to a cifar10-jpg.tar.gz, params.root to an unpacked "
        f"copy (the folder holding train/ and test/), or the environment variable {CIFAR10_JPG_ENV} to either"
    )


def _from_tree(root: Path, image_size: int | None, cache_dir: Path | None, given_by: str) -> ImageData:
    root = root.expanduser()
    for candidate in (root, root / "cifar10"):
        if all((candidate / split).is_dir() for split in SPLITS):
            break
    else:
        raise KdzooError(f"cifar10-jpg: {root} (from {given_by}) holds neither train/ and test/ nor cifar10/train and cifar10/test")
    train_images, train_labels, classes = load_split(candidate / "train", image_size=image_size, cache_dir=cache_dir)
    test_images, test_labels, test_classes = load_split(candidate / "test", image_size=image_size, cache_dir=cache_dir)
    check_splits_agree("cifar10-jpg", classes, test_classes, train_images, test_images, str(candidate))
    warn_if_single_class("cifar10-jpg", classes, str(candidate))
    return ImageData(train_images, train_labels, test_images, test_labels, classes, name="cifar10-jpg")


def _from_archive(archive: Path, image_size: int | None, cache_dir: Path | None, given_by: str) -> ImageData:
    archive = archive.expanduser().resolve()
    if not archive.is_file():
        raise KdzooError(f"cifar10-jpg: archive {archive} (from {given_by}) does not exist")
    cache_file = None
    if cache_dir is not None:
        stat = archive.stat()
        key = json.dumps([CACHE_FORMAT, str(archive), stat.st_size, stat.st_mtime_ns, image_size])
        cache_file = Path(cache_dir) / "cifar10-jpg" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"

    def decode() -> tuple[dict[str, Tensor], dict[str, str]]:
        members = _read_archive(archive)
        tensors: dict[str, Tensor] = {}
        split_classes = {}
        for split in SPLITS:
            entries = sorted(members[split])  # (class, path within class, bytes): torchvision's order
            if not entries:
                raise KdzooError(f"cifar10-jpg: archive {archive} has no images under */{split}/<class>/")
            split_classes[split] = sorted({class_name for class_name, _, _ in entries})
            label_of = {name: label for label, name in enumerate(split_classes[split])}
            blobs = ((f"{archive}:{split}/{c}/{p}", data) for c, p, data in entries)
            tensors[f"{split}_images"] = decode_images(blobs, len(entries), image_size)
            tensors[f"{split}_labels"] = torch.tensor([label_of[c] for c, _, _ in entries], dtype=torch.int64)
        check_splits_agree("cifar10-jpg", split_classes["train"], split_classes["test"],
                           tensors["train_images"], tensors["test_images"], str(archive))
        return tensors, {"classes": json.dumps(split_classes["train"]), "archive": str(archive)}

    tensors, metadata = cached_tensors(cache_file, decode)
    classes = json.loads(metadata["classes"])
    warn_if_single_class("cifar10-jpg", classes, str(archive))
    return ImageData(
        tensors["train_images"], tensors["train_labels"], tensors["test_images"], tensors["test_labels"],
        classes, name="cifar10-jpg",
    )


def _read_archive(archive: Path) -> dict[str, list[tuple[str, str, bytes]]]:
    """Image members per split as (class, path within the class folder, bytes), read in one pass."""
    members: dict[str, list[tuple[str, str, bytes]]] = {split: [] for split in SPLITS}
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member, split, class_name, inner in _image_members(tar):
                handle = tar.extractfile(member)
                if handle is not None:
                    members[split].append((class_name, inner, handle.read()))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise KdzooError(f"cifar10-jpg: cannot read archive {archive}: {exc}") from exc
    return members


def _image_members(tar: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, str, str, str]]:
    # Layout <anything>/{train,test}/<class>/<file>; hidden files (macOS "._x.jpg") are skipped.
    for member in tar:
        parts = PurePosixPath(member.name).parts
        if not member.isfile() or not is_image_file(parts[-1]) or parts[-1].startswith("."):
            continue
        for i, part in enumerate(parts[:-2]):
            if part in SPLITS:
                yield member, part, parts[i + 1], "/".join(parts[i + 2:])
                break


# --------------------------------------------------------------------------- torchvision CIFAR
def _torchvision_cifar(dataset_name: str, params, cache_dir: Path | None) -> ImageData:
    from torchvision import datasets

    dataset_class = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[dataset_name]
    if params.root is not None:
        root = Path(params.root).expanduser()
    elif cache_dir is not None:
        root = Path(cache_dir) / dataset_name
    else:
        raise KdzooError(f"{dataset_name} needs params.root (a folder holding {dataset_class.base_folder}/)")
    if not params.download and not (root / dataset_class.base_folder).is_dir():
        raise KdzooError(
            f"{dataset_name}: {root / dataset_class.base_folder} does not exist; pass download: true to fetch it "
            f"into {root}, or root: a folder that holds {dataset_class.base_folder}/"
        )
    try:
        train = dataset_class(str(root), train=True, download=params.download)
        test = dataset_class(str(root), train=False, download=params.download)
    except (RuntimeError, OSError) as exc:  # corrupt files, or a failed download
        raise KdzooError(f"{dataset_name} at {root}: {exc}") from exc

    def to_tensors(split) -> tuple[Tensor, Tensor]:
        images = torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous()  # NHWC numpy -> NCHW
        return images, torch.as_tensor(split.targets, dtype=torch.int64)

    train_images, train_labels = to_tensors(train)
    test_images, test_labels = to_tensors(test)
    return ImageData(train_images, train_labels, test_images, test_labels, list(train.classes), name=dataset_name)


def build_cifar10(params, *, seed: int = 0, cache_dir: Path | None = None) -> ImageData:
    """torchvision's CIFAR-10 (python version) as uint8 tensors; downloads only with ``download: true``."""
    return _torchvision_cifar("cifar10", params, cache_dir)


def build_cifar100(params, *, seed: int = 0, cache_dir: Path | None = None) -> ImageData:
    """torchvision's CIFAR-100 (python version, fine labels) as uint8 tensors; downloads only with ``download: true``."""
    return _torchvision_cifar("cifar100", params, cache_dir)
