"""Augmentation policies: contract (shape, dtype, reproducibility, per-image randomness) and exact cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kdzoo_data
from kdzoo.testing import isolated_host
from kdzoo_data import CutoutParams, PaperWeakParams, RandAugmentParams, WeakParams
from kdzoo_data.augment import build_cutout, build_paper_weak, build_randaugment, build_weak


@pytest.fixture(scope="module")
def registry():
    host = isolated_host(kdzoo_data)
    return host.registry


RANDOM_POLICIES = ["weak", "strong", "randaugment", "paper-weak", "paper-strong", "cutout", "autoaugment"]
ALL_POLICIES = ["none", *RANDOM_POLICIES]


def textured_batch(batch: int = 32, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)


def run(aug, images, seed):
    return aug(images, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ALL_POLICIES)
def test_keeps_shape_and_dtype_and_leaves_the_input_alone(registry, name):
    aug = registry.build("augmentation", name)
    images = textured_batch()
    before = images.clone()
    out = run(aug, images, 0)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(images, before), "the caller's batch must not be modified"
    assert run(aug, images[:0], 0).shape == (0, 3, 32, 32)


# (policy, params, fewest distinct outputs from 64 copies of one image). AutoAugment alone
# draws its operation per chunk of images (chunk_size 1: per image), and many of its
# draws leave an image unchanged or apply a magnitude-free operation, so outputs repeat.
PER_IMAGE = [(name, {}, 32) for name in RANDOM_POLICIES if name != "autoaugment"] + [("autoaugment", {"chunk_size": 1}, 16)]


@pytest.mark.parametrize("name,params,min_distinct", PER_IMAGE, ids=[name for name, _, _ in PER_IMAGE])
def test_reproducible_per_generator_and_random_per_image(registry, name, params, min_distinct):
    aug = registry.build("augmentation", name, params)
    # The same image 64 times: any difference between outputs is per-image randomness.
    images = textured_batch(1).expand(64, -1, -1, -1).contiguous()
    global_state = torch.get_rng_state()
    first, again, other = run(aug, images, 0), run(aug, images, 0), run(aug, images, 1)
    assert torch.equal(torch.get_rng_state(), global_state), "the global RNG must not be consumed"
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    distinct = torch.unique(first.flatten(1), dim=0).shape[0]
    assert distinct >= min_distinct, f"{distinct} distinct outputs from 64 copies of one image"
    changed = (first != images).flatten(1).any(1).float().mean()
    assert changed > 0.3


def test_autoaugment_chunks_share_one_draw(registry):
    images = textured_batch(1).expand(64, -1, -1, -1).contiguous()
    out = run(registry.build("augmentation", "autoaugment", {"chunk_size": 16}), images, 0)
    assert torch.unique(out.flatten(1), dim=0).shape[0] <= 4  # 64 images, 4 chunks


def test_weak_without_padding_and_with_sure_flip_is_an_exact_mirror():
    images = textured_batch(8)
    flip = build_weak(WeakParams(padding=0, flip_prob=1.0))
    keep = build_weak(WeakParams(padding=0, flip_prob=0.0))
    assert torch.equal(run(flip, images, 0), images.flip(-1))
    assert torch.equal(run(keep, images, 0), images)


@pytest.mark.parametrize("mode,torch_mode", [("reflect", "reflect"), ("zeros", "constant")])
def test_weak_output_is_one_of_the_padded_crops(mode, torch_mode):
    # Every output must be one of the (2p+1)^2 crops of the padded image, or its mirror.
    padding, size = 2, 8
    images = textured_batch(24, size)
    out = run(build_weak(WeakParams(padding=padding, padding_mode=mode)), images, 5)
    padded = F.pad(images.float(), [padding] * 4, mode=torch_mode).to(torch.uint8)
    seen_flip = seen_shift = False
    for original, result in zip(padded, out):
        crops = [original[:, y : y + size, x : x + size] for y in range(2 * padding + 1) for x in range(2 * padding + 1)]
        matches = [i for i, crop in enumerate(crops) if torch.equal(result, crop) or torch.equal(result, crop.flip(-1))]
        assert matches, "output is not a padded crop"
        seen_flip |= not torch.equal(result, crops[matches[0]])
        seen_shift |= matches[0] != (2 * padding + 1) * padding + padding
    assert seen_flip and seen_shift


def test_cutout_erases_exactly_size_squared_pixels_when_inside():
    size, hole = 32, 5
    images = torch.full((64, 3, size, size), 200, dtype=torch.uint8)
    out = run(build_cutout(CutoutParams(holes=1, size=hole, fill=0)), images, 0)
    erased = (out == 0).all(1)  # (B, H, W)
    assert torch.equal(erased[:, None].expand_as(out), out == 0), "holes span all channels"
    assert torch.equal(out[~erased[:, None].expand_as(out)].unique(), torch.tensor([200], dtype=torch.uint8))
    inside = 0
    for mask in erased:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        touches_border = rows.numel() and (rows.min() == 0 or rows.max() == size - 1 or cols.min() == 0 or cols.max() == size - 1)
        if touches_border:
            assert mask.sum() <= hole * hole  # clipped at the border
        else:
            inside += 1
            assert mask.sum() == hole * hole
            assert rows.max() - rows.min() + 1 == hole and cols.max() - cols.min() + 1 == hole
    assert inside > 32


def test_paper_weak_exact_cases_and_zero_rotation_corners():
    images = textured_batch(8)
    whole_image = dict(scale_min=1.0, scale_max=1.0, ratio_min=1.0, ratio_max=1.0, max_rotation=0.0)
    mirror = build_paper_weak(PaperWeakParams(**whole_image, flip_prob=1.0))
    identity = build_paper_weak(PaperWeakParams(**whole_image, flip_prob=0.0))
    assert torch.equal(run(mirror, images, 0), images.flip(-1))
    assert torch.equal(run(identity, images, 0), images)

    white = torch.full((64, 3, 32, 32), 255, dtype=torch.uint8)
    rotated = run(build_paper_weak(PaperWeakParams(**{**whole_image, "max_rotation": 15.0})), white, 0)
    corner_black = (rotated[:, :, 0, 0] == 0).all(1).float().mean()
    assert corner_black > 0.5, "rotated crops leave zero corners, as torchvision's rotate"
    assert (rotated[:, :, 16, 16] == 255).all()


def test_paper_weak_crops_zoom_in():
    # A left-to-right ramp: a crop of area fraction <= 0.25 spans at most ~half the ramp.
    ramp = torch.linspace(0, 255, 32).round().to(torch.uint8).expand(16, 3, 32, 32).contiguous()
    params = PaperWeakParams(scale_min=0.1, scale_max=0.25, flip_prob=0.0, max_rotation=0.0)
    out = run(build_paper_weak(params), ramp, 0).float()
    span = out[:, 0, 16, -1] - out[:, 0, 16, 0]
    assert (span > 0).all() and (span < 0.7 * 255).all()


def test_randaugment_passes_its_strength_to_torchvision():
    aug = build_randaugment(RandAugmentParams(num_ops=3, magnitude=27))
    policy = aug.steps[1].transform
    assert (policy.num_ops, policy.magnitude, policy.num_magnitude_bins) == (3, 27, 31)


def test_float_batches_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        build_weak(WeakParams())(torch.rand(2, 3, 8, 8), torch.Generator())


def test_params_reject_inverted_ranges_and_unknown_fields():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="scale_min"):
        PaperWeakParams(scale_min=0.9, scale_max=0.5)
    with pytest.raises(ValidationError):
        WeakParams(padding_mode="circular")
    with pytest.raises(ValidationError):
        RandAugmentParams(magnitude=31)
    with pytest.raises(ValidationError):
        CutoutParams(holez=2)
