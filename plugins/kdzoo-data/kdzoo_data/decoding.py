"""Decoding encoded image files (JPEG, PNG, BMP, TIFF, ...) into uint8 ``(3, H, W)`` tensors.

JPEGs are decoded in batches with ``torchvision.io.decode_jpeg`` (PERF-NOTES: 50k
CIFAR JPEGs in about 2 s); other formats go through ``decode_image`` and then PIL.
Every image comes out 8-bit RGB: grayscale and palette images are expanded, alpha is
dropped, and 16-bit images are scaled to 8 bits (not clipped or wrapped). A file that
neither decoder reads is named with what is wrong with it (empty, text, truncated, ...).
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from kdzoo.api import KdzooError

JPEG_MAGIC = b"\xff\xd8\xff"
DECODE_BATCH = 1024  # files read and decoded at a time: bounds the memory of encoded bytes


class _Undecodable(Exception):
    """One file that is not a readable image; the message says what is wrong with it."""


MAX_NAMED_BAD_FILES = 5  # undecodable files named in the error (the rest are counted)


def decode_images(blobs: Iterable[tuple[str, bytes]], count: int, image_size: int | None) -> Tensor:
    """Decode ``count`` encoded images given as (name, bytes) into one uint8 (N, 3, H, W) tensor.

    With ``image_size`` each image's shorter side is resized to it and the centre square
    kept; without it every image must already have the same size. Grayscale, palette
    and alpha images become RGB (alpha dropped); 16-bit images are scaled to 8 bits.
    Files that cannot be decoded are collected and refused together, each named with
    what is wrong with it.
    """
    out: Tensor | None = None
    first_name = ""
    first_shape: tuple[int, ...] | None = None
    written = 0
    bad: list[str] = []
    for chunk in _chunks(blobs, DECODE_BATCH):
        with _torchvision_io_quietly():
            decoded = _decode_chunk(chunk)
        images = []
        for (name, _), image in zip(chunk, decoded):
            if isinstance(image, str):
                bad.append(f"{name}: {image}")
                continue
            if image_size is not None:
                image = _fit_square(image, image_size)
            if first_shape is None:
                first_name, first_shape = name, tuple(image.shape)
            elif tuple(image.shape) != first_shape:
                raise KdzooError(
                    f"image {name} is {tuple(image.shape[1:])} but {first_name} is {first_shape[1:]}: "
                    "set params.image_size to resize every image to one size"
                )
            images.append(image)
        if written + len(chunk) > count:
            raise KdzooError(f"expected {count} images, got more")
        if not bad:  # once a file is bad the split is refused: stop copying, keep checking the rest
            if out is None:
                out = torch.empty((count, *first_shape), dtype=torch.uint8)
            torch.stack(images, out=out[written : written + len(images)])  # one copy per chunk, not per image
        written += len(chunk)
    if bad:
        more = f"; and {len(bad) - MAX_NAMED_BAD_FILES} more" if len(bad) > MAX_NAMED_BAD_FILES else ""
        what = "an image file cannot be decoded" if len(bad) == 1 else f"{len(bad)} image files cannot be decoded"
        fix = "remove or replace it" if len(bad) == 1 else "remove or replace them"
        raise KdzooError(f"{what} ({fix}): {'; '.join(bad[:MAX_NAMED_BAD_FILES])}{more}")
    if out is None or written != count:
        raise KdzooError(f"expected {count} images, decoded {written}")
    return out


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@contextmanager
def _torchvision_io_quietly():
    # torchvision 0.29 deprecates its image codecs in favour of TorchCodec, which this
    # environment lacks; the warning would repeat for every decoded batch.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning)
        yield


def _decode_chunk(chunk: list[tuple[str, bytes]]) -> list[Tensor | str]:
    """Each file as a uint8 (3, H, W) tensor, or a string saying why it cannot be decoded."""
    from torchvision.io import ImageReadMode, decode_jpeg

    decoded: list[Tensor | str | None] = [None] * len(chunk)
    jpeg_positions = [i for i, (_, data) in enumerate(chunk) if data[:3] == JPEG_MAGIC]
    if jpeg_positions:
        try:
            jpegs = decode_jpeg([_as_tensor(chunk[i][1]) for i in jpeg_positions], mode=ImageReadMode.RGB)
            for i, image in zip(jpeg_positions, jpegs):
                decoded[i] = image
        except RuntimeError:
            pass  # one bad or unusual file fails the batch: decode those one by one below
    for i, (name, data) in enumerate(chunk):
        if decoded[i] is None:
            try:
                decoded[i] = _decode_one(data)
            except _Undecodable as exc:
                decoded[i] = str(exc)
    return decoded  # type: ignore[return-value]


def _as_tensor(data: bytes) -> Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _decode_one(data: bytes) -> Tensor:
    """One encoded image as uint8 (3, H, W): torchvision's decoder, else PIL; _Undecodable if neither reads it."""
    from torchvision.io import ImageReadMode, decode_image

    if not data:
        raise _Undecodable("the file is empty (0 bytes)")
    try:
        image = decode_image(_as_tensor(data), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as exc:
        torchvision_reason = _short_reason(exc)  # formats torchvision does not read (bmp, tiff, ppm, ...): PIL below
    else:
        if image.ndim == 4:  # an animated GIF: its first frame, as PIL (torchvision's ImageFolder loader) gives
            image = image[0]
        return _to_uint8(image)
    return _decode_with_pil(data, torchvision_reason)


def _decode_with_pil(data: bytes, torchvision_reason: str) -> Tensor:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode = image.mode
            if mode.startswith("I;16") or mode == "I":
                array = np.asarray(image).astype(np.int64)
            elif mode == "F":
                raise _Undecodable("is a floating-point image (PIL mode F) with no defined value range; save it as an 8- or 16-bit image")
            else:
                array = np.asarray(image.convert("RGB"))
    except _Undecodable:
        raise
    except UnidentifiedImageError:
        raise _Undecodable(_unreadable_reason(data, torchvision_reason)) from None
    except Exception as exc:  # noqa: BLE001 - a truncated or corrupt file: PIL's own reason
        kind = _sniff_format(data)
        raise _Undecodable(f"is a corrupt, truncated or unsupported {kind or 'image'} file ({_short_reason(exc)})") from None
    if array.dtype != np.uint8:  # 16-bit grayscale (PIL modes I;16*, and I as 16-bit PGM/PNG open)
        if array.min() < 0 or array.max() > 65535:
            raise _Undecodable("is a 32-bit integer image with values outside 0-65535; save it as an 8- or 16-bit image")
        array = ((array + 128) // 257).astype(np.uint8)  # 0-65535 -> 0-255, rounded
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return torch.from_numpy(np.array(array)).permute(2, 0, 1).contiguous()  # a writable copy


def _to_uint8(image: Tensor) -> Tensor:
    """torchvision's decoders give uint16 for 16-bit PNGs: scale 0-65535 to 0-255 (rounded), not wrap."""
    if image.dtype == torch.uint8:
        return image
    if image.dtype == torch.uint16:
        return ((image.to(torch.int32) + 128) // 257).to(torch.uint8)
    raise _Undecodable(f"decodes to {image.dtype} pixels, not 8- or 16-bit ones; save it as an 8-bit image")


# Leading bytes of the formats kdzoo reads (the rest of what PIL reads is found by PIL).
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"RIFF", "WebP"),
    (b"P5", "PGM"),
    (b"P6", "PPM"),
)


def _sniff_format(data: bytes) -> str | None:
    return next((kind for magic, kind in _MAGIC if data.startswith(magic)), None)


_TORCHVISION_FORMATS = ("JPEG", "PNG", "GIF", "WebP")  # what torchvision.io.decode_image reads


def _unreadable_reason(data: bytes, torchvision_reason: str) -> str:
    kind = _sniff_format(data)
    if kind is not None:
        reason = torchvision_reason if kind in _TORCHVISION_FORMATS else "PIL cannot read it"
        return f"is a corrupt or truncated {kind} file ({reason})"
    text = _as_text(data[:64])
    if text is not None:
        return f"holds text, not image data (it starts {text[:40]!r})"
    return f"is not in any image format torchvision or PIL reads (it starts with bytes {data[:8].hex(' ')})"


def _as_text(head: bytes) -> str | None:
    """``head`` as text if it is printable UTF-8 (a character cut at the end allowed), else None."""
    for cut in range(4):
        try:
            text = head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return text if text and all(ch.isprintable() or ch in "\t\r\n" for ch in text) else None
    return None


def _short_reason(exc: BaseException) -> str:
    """An exception's message without torchvision's C++ source location prefix."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"^\w+(\(\))?, \S+\.(cpp|h):\d+, ", "", message)


def _fit_square(image: Tensor, size: int) -> Tensor:
    """Resize the shorter side to ``size`` (antialiased) and keep the centre square."""
    if image.shape[-2:] == (size, size):
        return image
    from torchvision.transforms.v2 import functional as TF

    image = TF.resize(image, size, antialias=True)
    return TF.center_crop(image, [size, size])
