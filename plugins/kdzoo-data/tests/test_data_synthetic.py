"""synthetic-shapes, the hook module and the plugin's registrations."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError

import kdzoo_data
from kdzoo.testing import isolated_host
from kdzoo_data import SHAPE_KINDS, SyntheticShapesParams
from kdzoo_data.synthetic import SHAPE_TESTS, build_synthetic_shapes, render_shapes

SMALL = dict(train_size=56, test_size=28, image_size=32)


def build(**params):
    return build_synthetic_shapes(SyntheticShapesParams(**{**SMALL, **params}), seed=123, cache_dir=None)


def test_hook_module_imports_without_torch():
    code = "import sys, kdzoo_data; assert 'torch' not in sys.modules, 'kdzoo_data imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_component_registers_and_its_factory_imports():
    host = isolated_host(kdzoo_data)
    registry = host.registry
    assert registry.names("dataset") == ["cifar10", "cifar10-jpg", "cifar100", "imagefolder", "synthetic-shapes"]
    assert {"none", "weak", "strong", "randaugment", "paper-weak", "paper-strong", "cutout", "autoaugment"} == set(registry.names("augmentation"))
    for kind in ("dataset", "augmentation"):
        for component in registry.by_kind(kind):
            assert callable(component.resolve_factory()), component.name
            assert component.description, component.name


def test_params_are_strict_and_bounded():
    with pytest.raises(ValidationError):
        SyntheticShapesParams(colour=3)  # unknown field
    with pytest.raises(ValidationError):
        SyntheticShapesParams(num_classes=len(SHAPE_KINDS) + 1)
    with pytest.raises(ValidationError):
        SyntheticShapesParams(num_classes=10, test_size=5)  # a class would be missing
    with pytest.raises(ValidationError):
        SyntheticShapesParams(clutter=1.5)


def test_deterministic_for_a_seed_and_different_across_seeds():
    first, again, other = build(seed=3), build(seed=3), build(seed=4)
    assert torch.equal(first.train_images, again.train_images)
    assert torch.equal(first.test_masks, again.test_masks)
    assert torch.equal(first.train_labels, again.train_labels)
    assert not torch.equal(first.train_images, other.train_images)
    # The splits are separate streams: the test set is not a copy of the training set.
    assert not torch.equal(first.train_images[:28], first.test_images)


def test_changing_one_split_size_leaves_the_other_unchanged():
    base, bigger_test = build(), build(test_size=42)
    assert torch.equal(base.train_images, bigger_test.train_images)


def test_shapes_dtypes_labels_and_classes():
    data = build(num_classes=len(SHAPE_KINDS))
    assert data.train_images.shape == (56, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (28, 3, 32, 32)
    assert data.train_labels.dtype == torch.int64
    assert data.train_masks.shape == (56, 32, 32) and data.train_masks.dtype == torch.bool
    assert data.classes == list(SHAPE_KINDS)
    for labels in (data.train_labels, data.test_labels):
        assert set(labels.tolist()) == set(range(len(SHAPE_KINDS)))  # every class present, labels in range


def test_masks_are_the_drawn_object_pixels():
    generator = torch.Generator().manual_seed(0)
    drawn = render_shapes(60, num_classes=len(SHAPE_KINDS), image_size=32, clutter=1.0, generator=generator)
    area = drawn.masks.sum((1, 2))
    assert (area > 10).all(), "every image shows its shape"
    assert (area < 0.6 * 32 * 32).all(), "a shape never fills the image"
    # Object inside the frame: the mask never touches the image border.
    border = drawn.masks[:, 0].any(1) | drawn.masks[:, -1].any(1) | drawn.masks[:, :, 0].any(1) | drawn.masks[:, :, -1].any(1)
    assert not border.any()
    outside = ~drawn.masks[:, None].expand_as(drawn.images)
    assert torch.equal(drawn.images[outside], drawn.backgrounds[outside]), "only mask pixels are painted"
    change = (drawn.images.float() - drawn.backgrounds.float()).abs().sum(1)  # (N, H, W)
    mean_change_inside = (change * drawn.masks).sum((1, 2)) / area
    assert (mean_change_inside > 40).all(), "the shape stands out from what lies under it"


def test_shape_kinds_are_distinct_shapes():
    # Each inside-test on a canonical frame: no two shapes overlap by more than 80% IoU.
    coords = torch.linspace(-1, 1, 64)
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    masks = torch.stack([test(u, v) for test in SHAPE_TESTS.values()]).flatten(1).float()
    assert (masks.sum(1) > 50).all()
    intersection = masks @ masks.T
    union = masks.sum(1)[:, None] + masks.sum(1)[None, :] - intersection
    iou = intersection / union
    off_diagonal = iou[~torch.eye(len(SHAPE_KINDS), dtype=torch.bool)]
    assert off_diagonal.max() < 0.8
