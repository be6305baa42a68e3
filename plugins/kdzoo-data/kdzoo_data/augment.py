"""Augmentation policies on uint8 ``(B, 3, H, W)`` batches with per-image randomness.

Every random number comes from the ``torch.Generator`` handed to the policy, so a
batch's augmentation is a function of (images, generator state): runs are reproducible
and resumable. Geometric steps are vectorised over the batch (index gathers and affine
grids, one draw per image). torchvision's AutoAugment / RandAugment draw one operation
for a whole tensor from the global RNG, so they run per chunk of images inside
``torch.random.fork_rng`` with the global RNG seeded from the generator.

Device-agnostic: the generator lives on the images' device (a CPU generator for CPU
images, ``torch.Generator(device="cuda")`` for CUDA images); every draw is made there
with ``generator=`` and ``device=images.device``, every constant tensor is created on
``images.device``, and nothing reads a device tensor back to the host (no sync).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# Shared by the steps below: every step maps (images, generator) -> images.
Step = Callable[[Tensor, torch.Generator], Tensor]


# --------------------------------------------------------------------------- random draws
def _rand(generator: torch.Generator, *size: int, device: torch.device) -> Tensor:
    """Uniform [0, 1) numbers drawn on the images' device (the generator's own)."""
    return torch.rand(size, generator=generator, device=device)


def _randint(generator: torch.Generator, low: int, high: int, *size: int, device: torch.device) -> Tensor:
    return torch.randint(low, high, size, generator=generator, device=device)


def _host_seed(generator: torch.Generator, device: torch.device) -> int:
    """A seed for the global (CPU) RNG that torchvision's policies draw from, taken from
    ``generator`` without waiting for a device.

    A CPU generator draws it, as always. A device generator's state (seed and offset)
    is host-side: the seed is a digest of it, and one draw on the device (never read)
    moves the generator on, so the next batch gets another seed.
    """
    if generator.device.type == "cpu":
        return int(torch.randint(0, 2**62, (1,), generator=generator))
    import hashlib

    state = bytes(generator.get_state().tolist())  # a host tensor: no device sync
    torch.randint(0, 2**62, (1,), generator=generator, device=device)
    return int.from_bytes(hashlib.sha256(state).digest()[:8], "little") & (2**62 - 1)


def _reflect_index(index: Tensor, length: int) -> Tensor:
    """Mirror out-of-range indices back into [0, length) like reflect padding (any pad width)."""
    if length == 1:
        return torch.zeros_like(index)
    period = 2 * (length - 1)
    index = index.remainder(period)
    return torch.where(index >= length, period - index, index)


# --------------------------------------------------------------------------- steps
@dataclass(frozen=True)
class CropFlip:
    """Random crop of a padded image back to its size, then a horizontal flip, per image.

    Implemented as one gather: each output pixel's source index is computed from the
    image's crop offset and flip, so no padded copy of the batch is ever built.
    """

    padding: int = 4
    padding_mode: str = "reflect"  # or "zeros"
    flip_prob: float = 0.5

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        batch, channels, height, width = images.shape
        device = images.device
        shift_y = _randint(generator, -self.padding, self.padding + 1, batch, device=device)
        shift_x = _randint(generator, -self.padding, self.padding + 1, batch, device=device)
        flip = _rand(generator, batch, device=device) < self.flip_prob

        rows = shift_y[:, None] + torch.arange(height, device=device)  # (B, H) source rows
        cols = shift_x[:, None] + torch.arange(width, device=device)  # (B, W) source columns
        cols = torch.where(flip[:, None], cols.flip(1), cols)  # flipping the crop reverses its columns
        if self.padding_mode == "reflect":
            rows, cols = _reflect_index(rows, height), _reflect_index(cols, width)
            inside = None
        else:
            inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
            rows, cols = rows.clamp(0, height - 1), cols.clamp(0, width - 1)

        flat_index = (rows[:, :, None] * width + cols[:, None, :]).reshape(batch, 1, height * width)
        out = images.reshape(batch, channels, height * width).gather(2, flat_index.expand(batch, channels, -1))
        out = out.reshape(batch, channels, height, width)
        if inside is not None:
            out = out * inside[:, None].to(out.dtype)
        return out


@dataclass(frozen=True)
class ResizedCropFlipRotate:
    """Random resized crop + horizontal flip + rotation, as one affine resampling per image.

    Crop sizes follow torchvision's RandomResizedCrop (10 tries at a random area and
    log-uniform aspect ratio, falling back to the whole image); the rotated crop's
    corners that fall outside it are zero, as torchvision's rotate leaves them. One
    bilinear resampling replaces torchvision's resize-then-rotate pair.
    """

    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    max_rotation: float = 0.0  # degrees

    attempts = 10

    def _crop_boxes(self, batch: int, height: int, width: int, generator: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
        """Per-image crop centre and half-extent in normalised [-1, 1] coordinates, (B, 2) each."""
        area = height * width
        target_area = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * _rand(generator, batch, self.attempts, device=device))
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * _rand(generator, batch, self.attempts, device=device))
        crop_w = torch.sqrt(target_area * aspect)
        crop_h = torch.sqrt(target_area / aspect)
        fits = (crop_w <= width) & (crop_h <= height)
        first_fit = fits.to(torch.uint8).argmax(1, keepdim=True)  # first attempt that fits, as torchvision
        crop_w = crop_w.gather(1, first_fit).squeeze(1)
        crop_h = crop_h.gather(1, first_fit).squeeze(1)

        # torchvision's fallback: the largest centred crop whose aspect ratio is in range.
        fallback_w = min(float(width), height * self.ratio[1])
        fallback_h = min(float(height), width / self.ratio[0])
        any_fit = fits.any(1)
        crop_w = torch.where(any_fit, crop_w, torch.full_like(crop_w, fallback_w))
        crop_h = torch.where(any_fit, crop_h, torch.full_like(crop_h, fallback_h))
        where = _rand(generator, batch, 2, device=device)
        left = torch.where(any_fit, where[:, 0] * (width - crop_w), (width - crop_w) / 2)
        top = torch.where(any_fit, where[:, 1] * (height - crop_h), (height - crop_h) / 2)

        # With align_corners=False the image spans [-1, 1] edge to edge.
        centre = torch.stack([(2 * left + crop_w) / width - 1, (2 * top + crop_h) / height - 1], dim=1)
        half_extent = torch.stack([crop_w / width, crop_h / height], dim=1)
        return centre, half_extent

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        batch, channels, height, width = images.shape
        device = images.device
        centre, half_extent = self._crop_boxes(batch, height, width, generator, device)
        flip = _rand(generator, batch, device=device) < self.flip_prob
        angle = torch.deg2rad(self.max_rotation * (2 * _rand(generator, batch, device=device) - 1))

        # One affine map per image from output to input normalised coordinates:
        # input = centre + half_extent * flip * rotation(output). The rotation acts in
        # pixel units (scaled by the aspect ratio) so non-square images do not shear.
        cos, sin = torch.cos(angle), torch.sin(angle)
        aspect = width / height
        rotation = torch.stack([torch.stack([cos, -sin / aspect], 1), torch.stack([sin * aspect, cos], 1)], 1)  # (B, 2, 2)
        mirror = torch.where(flip, -1.0, 1.0)[:, None]
        linear = half_extent[:, :, None] * rotation * torch.cat([mirror, torch.ones_like(mirror)], 1)[:, :, None]
        theta = torch.cat([linear, centre[:, :, None]], dim=2)  # (B, 2, 3)

        grid = torch.stack(_affine_planes(theta, height, width), dim=-1)  # (B, H, W, 2) as F.affine_grid
        sampled = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        if self.max_rotation > 0:
            # Output pixels whose rotated position leaves the crop are zero, as torchvision's rotate fills them.
            crop_x, crop_y = _affine_planes(torch.cat([rotation, torch.zeros(batch, 2, 1, device=device)], dim=2), height, width)
            inside_crop = (crop_x.abs_() <= 1) & (crop_y.abs_() <= 1)
            sampled.mul_(inside_crop.unsqueeze(1).float())  # a float multiply: masked_fill on uint8 is 2x slower
        return sampled.round_().clamp_(0, 255).to(torch.uint8)


def _affine_planes(theta: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """The x and y planes, (B, H, W) each, of ``F.affine_grid(theta, align_corners=False)``.

    Two broadcast multiply-adds per plane: affine_grid's batched 3x2 matmuls cost more
    than the resampling itself at 32 px.
    """
    ys = (2 * torch.arange(height, device=theta.device, dtype=theta.dtype) + 1) / height - 1
    xs = (2 * torch.arange(width, device=theta.device, dtype=theta.dtype) + 1) / width - 1
    planes = []
    for axis in range(2):
        row_part = theta[:, axis, 2, None, None] + theta[:, axis, 1, None, None] * ys[None, :, None]  # (B, H, 1)
        planes.append(torch.addcmul(row_part, theta[:, axis, 0, None, None], xs[None, None, :]))
    return planes[0], planes[1]


@dataclass(frozen=True)
class Cutout:
    """Erase ``holes`` squares of side ``size`` per image; a centre can be anywhere, the square is clipped."""

    holes: int = 1
    size: int = 16
    fill: int = 0

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        batch, _, height, width = images.shape
        if self.holes == 0:
            return images
        device = images.device
        centre_y = _randint(generator, 0, height, batch, self.holes, device=device)
        centre_x = _randint(generator, 0, width, batch, self.holes, device=device)
        top, left = centre_y - self.size // 2, centre_x - self.size // 2
        rows = torch.arange(height, device=device)[None, None, :]
        cols = torch.arange(width, device=device)[None, None, :]
        in_rows = (rows >= top[..., None]) & (rows < top[..., None] + self.size)  # (B, holes, H)
        in_cols = (cols >= left[..., None]) & (cols < left[..., None] + self.size)  # (B, holes, W)
        erased = (in_rows[..., :, None] & in_cols[..., None, :]).any(1)  # (B, H, W)
        return images.masked_fill(erased[:, None], self.fill)


@dataclass(frozen=True)
class ChunkedPolicy:
    """A torchvision policy (one random draw per call) applied per chunk of images.

    Images are shuffled before chunking so chunk-mates are random (an unshuffled,
    class-sorted test set would otherwise share operations within a class), and the
    global RNG the policy draws from is seeded from ``generator`` inside ``fork_rng``,
    leaving the caller's global RNG untouched.
    """

    transform: Callable[[Tensor], Tensor]
    chunk_size: int = 16

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        batch = images.shape[0]
        if batch == 0:
            return images
        order = torch.randperm(batch, generator=generator, device=images.device)
        seed = _host_seed(generator, images.device)
        # index_select, not images[order]: advanced indexing of uint8 is ~20x slower here.
        shuffled = images.index_select(0, order)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            augmented = torch.cat([self.transform(chunk) for chunk in shuffled.split(self.chunk_size)])
        return augmented.index_select(0, torch.argsort(order))


@dataclass(frozen=True)
class Pipeline:
    """Steps applied in order; checks the batch is uint8 (B, C, H, W) once at the door."""

    steps: Sequence[Step]

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"augmentations take uint8 (B, C, H, W) batches, got {images.dtype} {tuple(images.shape)}")
        for step in self.steps:
            images = step(images, generator)
        return images


# --------------------------------------------------------------------------- torchvision policies
# torchvision's v2 transforms: the same policies as v1, measured 3-4x faster on uint8
# chunks of 16 images.
def _autoaugment(policy: str) -> Callable[[Tensor], Tensor]:
    from torchvision.transforms.v2 import AutoAugment, AutoAugmentPolicy

    return AutoAugment(AutoAugmentPolicy(policy))


def _randaugment(num_ops: int, magnitude: int) -> Callable[[Tensor], Tensor]:
    from torchvision.transforms.v2 import RandAugment

    # 31 bins (torchvision's default): magnitude 0-30 spans each operation's full range.
    return RandAugment(num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=31)


def _crop_flip(params) -> CropFlip:
    return CropFlip(padding=params.padding, padding_mode=params.padding_mode, flip_prob=params.flip_prob)


def _cutout(params) -> Cutout:
    return Cutout(holes=params.holes, size=params.size, fill=params.fill)


def _resized_crop(params, max_rotation: float = 0.0) -> ResizedCropFlipRotate:
    return ResizedCropFlipRotate(
        scale=(params.scale_min, params.scale_max),
        ratio=(params.ratio_min, params.ratio_max),
        flip_prob=params.flip_prob,
        max_rotation=max_rotation,
    )


# --------------------------------------------------------------------------- factories
def build_none(params=None) -> Pipeline:
    """Identity: the batch passes unchanged (clean training and clean evaluation)."""
    return Pipeline(())


def build_weak(params) -> Pipeline:
    """Padded random crop + horizontal flip, per image: the standard CIFAR training policy."""
    return Pipeline((_crop_flip(params),))


def build_strong(params) -> Pipeline:
    """Weak + AutoAugment (CIFAR-10 policy) + Cutout.

    AutoAugment: Cubuk et al., "AutoAugment: Learning Augmentation Strategies from
    Data", CVPR 2019. Cutout: DeVries & Taylor, "Improved Regularization of
    Convolutional Neural Networks with Cutout", 2017.
    """
    return Pipeline((_crop_flip(params), ChunkedPolicy(_autoaugment("cifar10"), params.chunk_size), _cutout(params)))


def build_randaugment(params) -> Pipeline:
    """Weak + RandAugment with ``num_ops`` operations of strength ``magnitude``.

    Cubuk et al., "RandAugment: Practical Automated Data Augmentation with a Reduced
    Search Space", CVPR Workshops 2020.
    """
    return Pipeline((_crop_flip(params), ChunkedPolicy(_randaugment(params.num_ops, params.magnitude), params.chunk_size)))


def build_paper_weak(params) -> Pipeline:
    """The study's weak policy: RandomResizedCrop(scale 0.2-1) + flip + rotation up to 15 degrees.

    As in Guo et al., "Why does Knowledge Distillation Work? Rethink its Attention and
    Fidelity Mechanism", 2024 (repository zisci2/RethinkKD); vectorised with affine grids.
    """
    return Pipeline((_resized_crop(params, max_rotation=params.max_rotation),))


def build_paper_strong(params) -> Pipeline:
    """The study's strong policy: RandomResizedCrop + flip + AutoAugment (CIFAR-10) + Cutout.

    Guo et al. 2024 (see paper-weak); AutoAugment: Cubuk et al. 2019; Cutout: DeVries &
    Taylor 2017.
    """
    return Pipeline((_resized_crop(params), ChunkedPolicy(_autoaugment("cifar10"), params.chunk_size), _cutout(params)))


def build_cutout(params) -> Pipeline:
    """Cutout alone: erase square holes at random positions (DeVries & Taylor 2017)."""
    return Pipeline((_cutout(params),))


def build_autoaugment(params) -> Pipeline:
    """AutoAugment alone with a learned policy (Cubuk et al., CVPR 2019)."""
    return Pipeline((ChunkedPolicy(_autoaugment(params.policy), params.chunk_size),))
