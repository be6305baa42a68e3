"""Tests of the example plugin, written the way a plugin author would (kdzoo.testing helpers)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from kdzoo.authoring.check import check_plugin
from kdzoo.testing import isolated_host, make_distill_batch, random_images, random_logits, tiny_network_pair

import kdzoo_example
from kdzoo_example.losses import js_divergence


@pytest.fixture(scope="module")
def registry():
    """Only this plugin's components, loaded as kdzoo loads installed plugins."""
    return isolated_host(kdzoo_example).registry


def test_registers_its_components(registry):
    assert registry.names("loss") == ["jsd-kd"]
    assert registry.names("augmentation") == ["brightness-contrast"]


def test_jsd_kd_is_a_finite_scalar_that_trains_only_the_student(registry):
    loss = registry.build("loss", "jsd-kd", {"temperature": 2.0})
    student, teacher = tiny_network_pair()
    batch = make_distill_batch(loss, student, teacher, teacher_requires_grad=True)
    value = loss(batch)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert batch.images.grad is not None and batch.images.grad.abs().sum() > 0
    assert batch.teachers[0].logits.grad is None


def test_js_divergence_is_symmetric_bounded_and_zero_on_equal_inputs():
    p = F.log_softmax(random_logits(seed=1), dim=1)
    q = F.log_softmax(random_logits(seed=2), dim=1)
    torch.testing.assert_close(js_divergence(p, q), js_divergence(q, p))
    assert bool((js_divergence(p, q) <= math.log(2) + 1e-6).all())
    torch.testing.assert_close(js_divergence(p, p), torch.zeros(len(p)), atol=1e-6, rtol=0)


def test_jsd_kd_refuses_bad_params(registry):
    with pytest.raises(ValidationError):
        registry.build("loss", "jsd-kd", {"temperature": 0})
    with pytest.raises(ValidationError):
        registry.build("loss", "jsd-kd", {"temprature": 2.0})


def test_brightness_contrast_keeps_uint8_shape_and_is_reproducible(registry):
    augment = registry.build("augmentation", "brightness-contrast", {"brightness": 0.5, "contrast": 0.5})
    images = random_images(6)
    out = augment(images, torch.Generator().manual_seed(3))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert not torch.equal(out, images)
    assert torch.equal(out, augment(images, torch.Generator().manual_seed(3)))


def test_brightness_contrast_with_zero_strength_is_the_identity(registry):
    augment = registry.build("augmentation", "brightness-contrast", {"brightness": 0.0, "contrast": 0.0})
    images = random_images(4)
    assert torch.equal(augment(images, torch.Generator().manual_seed(0)), images)


def test_plugin_passes_kdzoo_plugins_check():
    report = check_plugin("kdzoo_example")
    assert report.ok, report.to_text()
