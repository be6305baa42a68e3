"""Bad data refused with clear messages: missing roots (at validation), undecodable and
16-bit images, odd colour modes, and one-class datasets (a warning, not an error)."""

from __future__ import annotations

import io
import re
import struct
import tarfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from kdzoo.errors import KdzooError, SpecError
from kdzoo.host.loading import load_plugins
from kdzoo.spec import validate_spec
from kdzoo_data import Cifar10JpgParams, ImageFolderParams, TorchvisionCifarParams
from kdzoo_data.cifar import build_cifar10_jpg
from kdzoo_data.decoding import decode_images
from kdzoo_data.imagefolder import build_imagefolder

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def solid_jpeg(colour=(200, 40, 40), size=8) -> bytes:
    return encode(Image.new("RGB", (size, size), colour), "JPEG")


def write_tree(root: Path, classes=("bird", "cat"), per_class: int = 2) -> Path:
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i:04d}.jpg").write_bytes(solid_jpeg())
    return root


def png16_rgb(array: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (PIL cannot write one): ``array`` is (H, W, 3) uint16."""
    height, width, _ = array.shape
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def to_8bit(values: np.ndarray) -> np.ndarray:
    """What a 16-bit value should become: scaled by 255/65535 and rounded."""
    return np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)


def decode_one(data: bytes, name: str = "x.png") -> torch.Tensor:
    return decode_images([(name, data)], 1, None)[0]


# --------------------------------------------------------------------------- 1: missing roots, at validation
def test_params_refuse_paths_that_do_not_exist(tmp_path):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(ValidationError, match="no-such-dir does not exist") as error:
        ImageFolderParams(train_root=missing, test_root=tmp_path)
    assert [e["loc"] for e in error.value.errors()] == [("train_root",)]
    with pytest.raises(ValidationError, match="does not exist") as error:
        ImageFolderParams(train_root=tmp_path, test_root=missing)
    assert [e["loc"] for e in error.value.errors()] == [("test_root",)]
    with pytest.raises(ValidationError, match="missing.tar.gz does not exist") as error:
        Cifar10JpgParams(archive=tmp_path / "missing.tar.gz")
    assert [e["loc"] for e in error.value.errors()] == [("archive",)]
    with pytest.raises(ValidationError, match="no-such-dir does not exist") as error:
        Cifar10JpgParams(root=missing)
    assert [e["loc"] for e in error.value.errors()] == [("root",)]
    with pytest.raises(ValidationError, match="no-such-dir does not exist.*download: true") as error:
        TorchvisionCifarParams(root=missing)
    assert [e["loc"] for e in error.value.errors()] == [("root",)]
    assert TorchvisionCifarParams(root=missing, download=True).root == missing  # download creates it


def test_params_refuse_a_file_for_a_folder_and_a_folder_for_an_archive(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValidationError, match="is a file, not a folder"):
        ImageFolderParams(train_root=tmp_path / "file.txt", test_root=tmp_path)
    with pytest.raises(ValidationError, match="is a folder, not a file"):
        Cifar10JpgParams(archive=tmp_path)
    with pytest.raises(ValidationError, match="not both"):
        Cifar10JpgParams(archive=tmp_path / "file.txt", root=tmp_path)


def test_params_defaults_and_existing_paths_still_validate(tmp_path):
    assert ImageFolderParams().train_root is None and Cifar10JpgParams().archive is None and TorchvisionCifarParams().root is None
    (tmp_path / "a.tar.gz").write_bytes(b"")
    assert Cifar10JpgParams(archive=tmp_path / "a.tar.gz").archive == tmp_path / "a.tar.gz"
    assert ImageFolderParams(train_root=tmp_path, test_root=tmp_path).train_root == tmp_path


def test_relative_paths_are_relative_to_the_working_directory_and_kept_as_written(tmp_path, monkeypatch):
    write_tree(tmp_path / "data" / "train")
    write_tree(tmp_path / "data" / "test", per_class=1)
    monkeypatch.chdir(tmp_path)
    params = ImageFolderParams(train_root="data/train", test_root="data/test", cache=False)
    assert params.train_root == Path("data/train")  # not rewritten to an absolute path
    assert params.model_dump(mode="json")["train_root"] == "data/train"
    assert build_imagefolder(params, seed=0, cache_dir=None).classes == ["bird", "cat"]
    with pytest.raises(ValidationError, match=re.escape(str(tmp_path / "data" / "nope"))):  # says where it looked
        ImageFolderParams(train_root="data/nope", test_root="data/test")
    monkeypatch.chdir(tmp_path / "data")
    with pytest.raises(ValidationError, match="data/train does not exist"):  # the same spec from elsewhere
        ImageFolderParams(train_root="data/train", test_root="test")


@pytest.fixture(scope="module")
def registry():
    return load_plugins().registry


def spec_with(data: dict) -> dict:
    return {"name": "checks", "model": "cifar-resnet", "data": data}


def problems_of(spec: dict, registry) -> list[str]:
    with pytest.raises(SpecError) as error:
        validate_spec(spec, registry)
    return error.value.problems


def test_validate_spec_names_the_missing_root_field(tmp_path, registry):
    write_tree(tmp_path / "train")
    good = {"name": "imagefolder", "params": {"train_root": str(tmp_path / "train"), "test_root": str(tmp_path / "train")}}
    validate_spec(spec_with(good), registry)  # the same spec with existing folders is valid

    missing = str(tmp_path / "no-such-dir")
    problems = problems_of(spec_with({"name": "cifar10-jpg", "params": {"root": missing}}), registry)
    assert any(re.search(r"^data\.params\b.*\broot\b.*no-such-dir does not exist", p) for p in problems), problems
    problems = problems_of(spec_with({"name": "cifar10-jpg", "params": {"archive": missing + ".tar.gz"}}), registry)
    assert any(re.search(r"^data\.params\b.*\barchive\b.*does not exist", p) for p in problems), problems
    problems = problems_of(spec_with({"name": "imagefolder", "params": {**good["params"], "train_root": missing}}), registry)
    assert any(re.search(r"^data\.params\b.*\btrain_root\b.*does not exist", p) for p in problems), problems
    problems = problems_of(spec_with({"name": "cifar100", "params": {"root": missing}}), registry)
    assert any(re.search(r"^data\.params\b.*\broot\b.*does not exist", p) for p in problems), problems


# --------------------------------------------------------------------------- 2 and 5: undecodable files
def build_tree(tmp_path: Path):
    return build_imagefolder(ImageFolderParams(train_root=tmp_path / "train", test_root=tmp_path / "test", cache=False), seed=0, cache_dir=None)


def test_a_zero_byte_jpeg_is_named_with_what_is_wrong(tmp_path):
    write_tree(tmp_path / "train")
    write_tree(tmp_path / "test", per_class=1)
    (tmp_path / "train" / "cat" / "0001.jpg").write_bytes(b"")
    with pytest.raises(KdzooError) as error:
        build_tree(tmp_path)
    message = str(error.value)
    assert re.search(r"cat[/\\]0001\.jpg: the file is empty \(0 bytes\)", message), message
    assert "\n" not in message and "BytesIO" not in message and ".cpp" not in message


def test_a_text_file_with_an_image_extension_is_named_as_text(tmp_path):
    write_tree(tmp_path / "train")
    write_tree(tmp_path / "test", per_class=1)
    (tmp_path / "train" / "bird" / "notes.png").write_text("these are my notes, not a picture\n")
    with pytest.raises(KdzooError) as error:
        build_tree(tmp_path)
    message = str(error.value)
    assert re.search(r"bird[/\\]notes\.png: holds text, not image data", message), message
    assert "\n" not in message and "BytesIO" not in message


def test_every_bad_file_is_named_and_corrupt_files_say_what_they_are(tmp_path):
    jpeg = solid_jpeg(size=64)
    blobs = [
        ("good.jpg", jpeg),
        ("empty.jpg", b""),
        ("truncated.jpg", jpeg[: len(jpeg) // 2]),
        ("broken.png", encode(Image.new("RGB", (8, 8)))[:40]),
        ("noise.bmp", bytes(range(7, 40))),
    ]
    with pytest.raises(KdzooError) as error:
        decode_images(blobs, len(blobs), image_size=8)
    message = str(error.value)
    assert message.startswith("4 image files cannot be decoded")
    assert "empty.jpg: the file is empty" in message
    assert re.search(r"truncated\.jpg: is a corrupt.*JPEG file \(.*truncated", message), message
    assert "broken.png: is a corrupt or truncated PNG file" in message
    assert "noise.bmp: is not in any image format" in message
    assert "good.jpg" not in message and ".cpp" not in message and "BytesIO" not in message


def test_many_bad_files_are_counted_not_all_listed():
    with pytest.raises(KdzooError, match=r"^12 image files cannot be decoded.*; and 7 more$"):
        decode_images([(f"{i}.jpg", b"") for i in range(12)], 12, None)


@pytest.mark.parametrize("mode, fmt", [("L", "PNG"), ("L", "JPEG"), ("L", "BMP"), ("LA", "PNG"), ("P", "PNG"), ("1", "PNG"), ("L", "TIFF")])
def test_grayscale_and_palette_images_decode_to_three_equal_channels(mode, fmt):
    image = Image.new("L", (5, 4), 170).convert(mode) if mode != "1" else Image.new("1", (5, 4), 1)
    decoded = decode_one(encode(image, fmt), f"x.{fmt.lower()}")
    expected = 255 if mode == "1" else 170
    assert decoded.dtype == torch.uint8 and decoded.shape == (3, 4, 5)
    assert (decoded.int() - expected).abs().max() <= 2, decoded[:, 0, 0]


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "WEBP"])
def test_rgba_images_decode_to_their_rgb_channels(fmt):
    image = Image.new("RGBA", (6, 3), (200, 100, 50, 128))
    decoded = decode_one(encode(image, fmt), f"x.{fmt.lower()}")
    assert decoded.shape == (3, 3, 6)
    assert (decoded[:, 0, 0].int() - torch.tensor([200, 100, 50])).abs().max() <= 3, decoded[:, 0, 0]


# --------------------------------------------------------------------------- 3: 16-bit images
SIXTEEN_BIT = np.array([[0, 255, 256, 1000, 20000], [32768, 40000, 65000, 65280, 65535]], dtype=np.uint16)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_a_16_bit_grayscale_image_is_scaled_to_8_bits(fmt):
    image = Image.fromarray(SIXTEEN_BIT)
    assert image.mode == "I;16"
    decoded = decode_one(encode(image, fmt), f"x.{fmt.lower()}")
    assert decoded.dtype == torch.uint8 and decoded.shape == (3, 2, 5)
    for channel in decoded:
        assert channel.numpy().tolist() == to_8bit(SIXTEEN_BIT).tolist()


def test_a_16_bit_pgm_is_scaled_to_8_bits():
    pgm = b"P5\n5 2\n65535\n" + SIXTEEN_BIT.astype(">u2").tobytes()
    assert Image.open(io.BytesIO(pgm)).mode in ("I", "I;16", "I;16B")
    assert decode_one(pgm, "x.pgm")[0].numpy().tolist() == to_8bit(SIXTEEN_BIT).tolist()


def test_a_16_bit_rgb_png_is_scaled_to_8_bits_per_channel():
    rgb = np.stack([SIXTEEN_BIT, SIXTEEN_BIT[::-1], np.full_like(SIXTEEN_BIT, 257 * 77)], axis=2)
    decoded = decode_one(png16_rgb(rgb))
    assert decoded.dtype == torch.uint8 and decoded.shape == (3, 2, 5)
    assert decoded.permute(1, 2, 0).numpy().tolist() == to_8bit(rgb).tolist()


def test_a_16_bit_png_in_an_image_folder_decodes_like_its_8_bit_version(tmp_path):
    for split in ("train", "test"):
        for name, level in (("dark", 40), ("light", 220)):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("L", (4, 4), level).save(tmp_path / split / name / "8bit.png")
            Image.fromarray(np.full((4, 4), level * 257, dtype=np.uint16)).save(tmp_path / split / name / "16bit.png")
    data = build_tree(tmp_path)
    assert data.train_images.shape == (4, 3, 4, 4)
    for image, label in zip(data.train_images, data.train_labels):
        assert (image == (40, 220)[int(label)]).all()


def test_a_floating_point_image_is_refused_by_name():
    tiff = encode(Image.fromarray(np.full((2, 2), 0.5, dtype=np.float32)), "TIFF")
    with pytest.raises(KdzooError, match=r"depth\.tif: is a floating-point image"):
        decode_images([("depth.tif", tiff)], 1, None)


# --------------------------------------------------------------------------- 4: one class
def test_a_one_class_image_folder_warns_but_builds(tmp_path):
    write_tree(tmp_path / "train", classes=("cat",))
    write_tree(tmp_path / "test", classes=("cat",), per_class=1)
    with pytest.warns(UserWarning, match=r"only one class \('cat'\).*accuracy and distillation are meaningless"):
        data = build_tree(tmp_path)
    assert data.classes == ["cat"] and data.train_images.shape[0] == 2


def test_a_one_class_cifar10_jpg_warns_from_a_tree_and_an_archive(tmp_path):
    write_tree(tmp_path / "cifar10" / "train", classes=("cat",))
    write_tree(tmp_path / "cifar10" / "test", classes=("cat",), per_class=1)
    with pytest.warns(UserWarning, match="only one class"):
        build_cifar10_jpg(Cifar10JpgParams(root=tmp_path, cache=False), seed=0, cache_dir=None)
    archive = tmp_path / "one.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "cifar10", arcname="cifar10")
    for _ in range(2):  # decoded, then from the cache: both warn
        with pytest.warns(UserWarning, match="only one class"):
            build_cifar10_jpg(Cifar10JpgParams(archive=archive), seed=0, cache_dir=tmp_path / "cache")


def test_two_classes_do_not_warn(tmp_path):
    write_tree(tmp_path / "train")
    write_tree(tmp_path / "test", per_class=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_tree(tmp_path)
    assert not [w for w in caught if "one class" in str(w.message)]


def test_text_detection_survives_a_character_cut_at_the_sniffed_length():
    content = b"a" + ("é" * 40).encode()  # 2-byte characters after 1 byte: the first 64 bytes end mid-character
    with pytest.raises(KdzooError, match="holds text"):
        decode_images([("x.jpg", content)], 1, None)
