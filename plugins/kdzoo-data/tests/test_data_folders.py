"""imagefolder, cifar10-jpg and the torchvision CIFAR error paths, on tiny trees in tmp_path."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torchvision.io import encode_jpeg, encode_png

from kdzoo.api import KdzooError
from kdzoo_data import Cifar10JpgParams, ImageFolderParams, TorchvisionCifarParams
from kdzoo_data import imagefolder
from kdzoo_data.cifar import CIFAR10_JPG_ENV, build_cifar10, build_cifar100, build_cifar10_jpg
from kdzoo_data.imagefolder import build_imagefolder

# torchvision 0.29 deprecates its codecs (TorchCodec is not installed here).
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

# Class -> the solid colour of its images: the decoded colour tells the label.
CLASS_COLOURS = {"bird": (230, 20, 20), "cat": (20, 230, 20), "airplane": (20, 20, 230)}
SORTED_CLASSES = sorted(CLASS_COLOURS)  # ImageFolder order: airplane, bird, cat


def solid(colour, size=8) -> torch.Tensor:
    return torch.tensor(colour, dtype=torch.uint8)[:, None, None].expand(3, size, size).contiguous()


def write_tree(root: Path, per_class: int = 2, size: int = 8, png_in: str | None = "cat") -> Path:
    """root/<class>/NNNN.jpg (plus one PNG in ``png_in``: the non-JPEG decode path)."""
    for name, colour in CLASS_COLOURS.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            (folder / f"{i:04d}.jpg").write_bytes(encode_jpeg(solid(colour, size), quality=95).numpy().tobytes())
        if name == png_in:
            (folder / "extra.PNG").write_bytes(encode_png(solid(colour, size)).numpy().tobytes())
        (folder / "notes.txt").write_text("not an image")
    return root


def assert_labels_match_colours(images: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> None:
    for image, label in zip(images, labels):
        expected = torch.tensor(CLASS_COLOURS[classes[label]], dtype=torch.float32)
        assert (image.float().mean((1, 2)) - expected).abs().max() < 6  # JPEG of a flat colour is near exact


@pytest.fixture
def tree(tmp_path):
    return write_tree(tmp_path / "train"), write_tree(tmp_path / "test", per_class=1, png_in=None)


def test_imagefolder_classes_labels_and_images(tree, tmp_path):
    train_root, test_root = tree
    data = build_imagefolder(ImageFolderParams(train_root=train_root, test_root=test_root), seed=0, cache_dir=tmp_path / "cache")
    assert data.classes == SORTED_CLASSES
    assert data.train_images.shape == (7, 3, 8, 8) and data.train_images.dtype == torch.uint8
    assert data.train_labels.tolist() == [0, 0, 1, 1, 2, 2, 2]  # sorted classes, files sorted within a class
    assert data.test_labels.tolist() == [0, 1, 2]
    assert_labels_match_colours(data.train_images, data.train_labels, data.classes)
    assert_labels_match_colours(data.test_images, data.test_labels, data.classes)


def test_second_load_reads_the_cache_without_decoding(tree, tmp_path, monkeypatch):
    train_root, test_root = tree
    params = ImageFolderParams(train_root=train_root, test_root=test_root)
    first = build_imagefolder(params, seed=0, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache" / "imagefolder").glob("*.safetensors"))) == 2  # one per split

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(imagefolder, "decode_images", no_decoding)
    second = build_imagefolder(params, seed=0, cache_dir=tmp_path / "cache")
    assert torch.equal(first.train_images, second.train_images)
    assert torch.equal(first.test_labels, second.test_labels)
    assert second.classes == first.classes


def test_cache_is_rebuilt_when_files_change_and_skipped_when_off(tree, tmp_path, monkeypatch):
    train_root, test_root = tree
    calls = []
    real_decode = imagefolder.decode_images
    monkeypatch.setattr(imagefolder, "decode_images", lambda *a, **k: calls.append(1) or real_decode(*a, **k))
    params = ImageFolderParams(train_root=train_root, test_root=test_root)
    build_imagefolder(params, seed=0, cache_dir=tmp_path / "cache")
    assert len(calls) == 2
    (train_root / "cat" / "0009.jpg").write_bytes((train_root / "cat" / "0000.jpg").read_bytes())
    changed = build_imagefolder(params, seed=0, cache_dir=tmp_path / "cache")
    assert len(calls) == 3 and changed.train_images.shape[0] == 8  # only the train split decoded again

    build_imagefolder(ImageFolderParams(train_root=train_root, test_root=test_root, cache=False), seed=0, cache_dir=tmp_path / "nocache")
    assert len(calls) == 5 and not (tmp_path / "nocache").exists()


def test_mixed_sizes_need_image_size(tmp_path):
    train_root = write_tree(tmp_path / "train", png_in=None)
    (train_root / "cat" / "big.png").write_bytes(encode_png(solid(CLASS_COLOURS["cat"], 12)).numpy().tobytes())
    test_root = write_tree(tmp_path / "test", png_in=None)
    with pytest.raises(KdzooError, match="image_size"):
        build_imagefolder(ImageFolderParams(train_root=train_root, test_root=test_root), seed=0, cache_dir=tmp_path / "c")
    data = build_imagefolder(ImageFolderParams(train_root=train_root, test_root=test_root, image_size=10), seed=0, cache_dir=tmp_path / "c")
    assert data.train_images.shape[1:] == (3, 10, 10) and data.test_images.shape[1:] == (3, 10, 10)
    assert_labels_match_colours(data.train_images, data.train_labels, data.classes)


def test_bmp_goes_through_pil_and_a_corrupt_jpeg_is_named(tmp_path):
    from PIL import Image

    train_root = write_tree(tmp_path / "train", png_in=None)
    Image.new("RGB", (8, 8), CLASS_COLOURS["bird"]).save(train_root / "bird" / "from-pil.bmp")
    test_root = write_tree(tmp_path / "test", png_in=None)
    data = build_imagefolder(ImageFolderParams(train_root=train_root, test_root=test_root, cache=False), seed=0, cache_dir=tmp_path)
    assert data.train_labels.tolist().count(data.classes.index("bird")) == 3
    assert_labels_match_colours(data.train_images, data.train_labels, data.classes)

    (train_root / "cat" / "0001.jpg").write_bytes(b"\xff\xd8\xff" + b"not really a jpeg")
    with pytest.raises(KdzooError, match="0001.jpg"):
        build_imagefolder(ImageFolderParams(train_root=train_root, test_root=test_root, cache=False), seed=0, cache_dir=tmp_path)


def test_imagefolder_errors_name_the_path(tmp_path):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(ValidationError, match="no-such-dir does not exist"):  # refused when the spec is validated
        ImageFolderParams(train_root=missing, test_root=missing)
    with pytest.raises(KdzooError, match="no-such-dir"):  # ... and when it vanished after validation
        build_imagefolder(ImageFolderParams.model_construct(train_root=missing, test_root=missing), seed=0, cache_dir=tmp_path)
    with pytest.raises(KdzooError, match="train_root"):
        build_imagefolder(ImageFolderParams(), seed=0, cache_dir=tmp_path)
    root = write_tree(tmp_path / "train")
    (root / "dog").mkdir()
    with pytest.raises(KdzooError, match=r"train[/\\]dog"):
        build_imagefolder(ImageFolderParams(train_root=root, test_root=root), seed=0, cache_dir=tmp_path)
    (tmp_path / "flat").mkdir()
    with pytest.raises(KdzooError, match="no class folders"):
        build_imagefolder(ImageFolderParams(train_root=tmp_path / "flat", test_root=root), seed=0, cache_dir=tmp_path)


def test_test_split_with_other_classes_is_refused(tmp_path):
    train_root = write_tree(tmp_path / "train")
    test_root = write_tree(tmp_path / "test")
    (test_root / "dog").mkdir()
    (test_root / "dog" / "0.jpg").write_bytes((test_root / "cat" / "0000.jpg").read_bytes())
    with pytest.raises(KdzooError, match="dog"):
        build_imagefolder(ImageFolderParams(train_root=train_root, test_root=test_root), seed=0, cache_dir=tmp_path / "c")


# --------------------------------------------------------------------------- cifar10-jpg
@pytest.fixture
def cifar_archive(tmp_path):
    source = tmp_path / "src"
    write_tree(source / "cifar10" / "train", per_class=2)
    write_tree(source / "cifar10" / "test", per_class=1, png_in=None)
    archive = tmp_path / "cifar10-jpg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar10", arcname="cifar10")
    return archive, source


def test_cifar10_jpg_from_archive_matches_the_unpacked_tree(cifar_archive, tmp_path):
    archive, source = cifar_archive
    from_archive = build_cifar10_jpg(Cifar10JpgParams(archive=archive), seed=0, cache_dir=tmp_path / "cache")
    from_tree = build_cifar10_jpg(Cifar10JpgParams(root=source), seed=0, cache_dir=tmp_path / "cache")
    assert from_archive.classes == from_tree.classes == SORTED_CLASSES
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(from_archive, field), getattr(from_tree, field)), field
    assert_labels_match_colours(from_archive.train_images, from_archive.train_labels, from_archive.classes)
    # Nothing unpacked: the archive is decoded straight into one cache file.
    assert len(list((tmp_path / "cache" / "cifar10-jpg").glob("*.safetensors"))) == 1
    assert not list((tmp_path / "cache").rglob("*.jpg"))


def test_cifar10_jpg_second_load_reads_the_cache(cifar_archive, tmp_path, monkeypatch):
    archive, _ = cifar_archive
    first = build_cifar10_jpg(Cifar10JpgParams(archive=archive), seed=0, cache_dir=tmp_path / "cache")
    import kdzoo_data.cifar as cifar

    monkeypatch.setattr(cifar, "_read_archive", lambda *a: (_ for _ in ()).throw(AssertionError("archive read again")))
    second = build_cifar10_jpg(Cifar10JpgParams(archive=archive), seed=0, cache_dir=tmp_path / "cache")
    assert torch.equal(first.train_images, second.train_images) and second.classes == first.classes


def test_cifar10_jpg_from_environment(cifar_archive, tmp_path, monkeypatch):
    archive, source = cifar_archive
    monkeypatch.setenv(CIFAR10_JPG_ENV, str(archive))
    assert build_cifar10_jpg(Cifar10JpgParams(), seed=0, cache_dir=tmp_path / "c1").num_classes == 3
    monkeypatch.setenv(CIFAR10_JPG_ENV, str(source))  # the parent of cifar10/ works too
    assert build_cifar10_jpg(Cifar10JpgParams(cache=False), seed=0, cache_dir=tmp_path / "c2").train_images.shape[0] == 7


def test_cifar10_jpg_errors(tmp_path, monkeypatch):
    monkeypatch.delenv(CIFAR10_JPG_ENV, raising=False)
    with pytest.raises(KdzooError, match=CIFAR10_JPG_ENV):
        build_cifar10_jpg(Cifar10JpgParams(), seed=0, cache_dir=tmp_path)
    # Missing paths are refused by the params model; the build still checks (data can vanish after validation).
    with pytest.raises(KdzooError, match="missing.tar.gz"):
        build_cifar10_jpg(Cifar10JpgParams.model_construct(archive=tmp_path / "missing.tar.gz"), seed=0, cache_dir=tmp_path)
    with pytest.raises(KdzooError, match="nowhere"):
        build_cifar10_jpg(Cifar10JpgParams.model_construct(root=tmp_path / "nowhere"), seed=0, cache_dir=tmp_path)
    (tmp_path / "nowhere").mkdir()
    with pytest.raises(KdzooError, match="nowhere.*neither train/ and test/"):
        build_cifar10_jpg(Cifar10JpgParams(root=tmp_path / "nowhere"), seed=0, cache_dir=tmp_path)
    monkeypatch.setenv(CIFAR10_JPG_ENV, str(tmp_path / "env-missing.tar.gz"))
    with pytest.raises(KdzooError, match="env-missing"):
        build_cifar10_jpg(Cifar10JpgParams(), seed=0, cache_dir=tmp_path)


# --------------------------------------------------------------------------- torchvision CIFAR
@pytest.mark.parametrize("build", [build_cifar10, build_cifar100])
def test_torchvision_cifar_without_files_or_download_is_a_user_error(build, tmp_path):
    (tmp_path / "cifar-root").mkdir()  # a root without the CIFAR files in it
    with pytest.raises(KdzooError, match="download: true") as error:
        build(TorchvisionCifarParams(root=tmp_path / "cifar-root"), seed=0, cache_dir=tmp_path)
    assert str(tmp_path / "cifar-root") in str(error.value)
    (tmp_path / "cifar-root").rmdir()  # a missing root is refused by the params model; the build still says what to do
    with pytest.raises(KdzooError, match="download: true"):
        build(TorchvisionCifarParams.model_construct(root=tmp_path / "cifar-root"), seed=0, cache_dir=tmp_path)
    with pytest.raises(KdzooError, match=str(tmp_path / "cache")):  # default root: under the cache dir
        build(TorchvisionCifarParams(), seed=0, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not os.listdir(tmp_path / "cache")
