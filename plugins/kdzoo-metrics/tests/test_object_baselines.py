"""The same-area baselines of the attention-on-object IoU: a centred disc and a random mask."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from kdzoo.api import CamHead, Network
from kdzoo_metrics.object_baselines import centre_ranks, disc_masks, random_masks, random_ranks

KEYS = ("attn_object_iou", "attn_object_iou_random", "attn_object_iou_disc")


def red_cam_network() -> Network:
    """A CNN whose summed CAM is the red channel: 1x1 conv keeping R, average pool, linear head."""
    conv = nn.Conv2d(3, 1, 1, bias=False)
    head = nn.Linear(1, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1))
        head.weight.copy_(torch.tensor([[1.0], [0.0]]))
        head.bias.zero_()
    body = nn.Sequential()
    body.add_module("features", conv)
    body.add_module("pool", nn.AdaptiveAvgPool2d(1))
    body.add_module("flatten", nn.Flatten())
    body.add_module("head", head)
    cam = CamHead(features="features", classifier="head")
    return Network(body, num_classes=2, mean=(0, 0, 0), std=(1, 1, 1), cam=cam).eval()


def images_with_red(red_masks: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` images whose red channel is the given masks: the CAM mask is that mask
    (an all-black image has a constant CAM, so an empty mask)."""
    images = torch.zeros(len(red_masks), 3, *red_masks.shape[1:])
    images[:, 0] = red_masks.float()
    return images


def object_batch(make_batch, red_masks, objects, **extra):
    network = red_cam_network()
    images = images_with_red(red_masks)
    with torch.no_grad():
        logits = {"model": network(images)}
    return make_batch(logits, torch.zeros(len(images), dtype=torch.long), images=images,
                      networks={"model": network}, masks=objects.bool(), teachers=(), student="model", **extra)


def figures(result):
    return [result[f"{key}/model"] for key in KEYS]


def square(size, rows, cols, count=1):
    mask = torch.zeros(count, size, size, dtype=torch.bool)
    mask[:, rows, cols] = True
    return mask


# --------------------------------------------------------------------------- the masks
def test_centre_ranking_by_hand_with_raster_tie_breaks():
    # 3x3: the centre, then its 4 neighbours (raster order), then the 4 corners.
    assert centre_ranks(3, 3).view(3, 3).tolist() == [[5, 1, 6], [2, 0, 3], [7, 4, 8]]
    # 4x4: the 4 central pixels tie (distance sqrt(1/2) each): raster order breaks it.
    assert disc_masks(torch.tensor([2]), 4, 4)[0].int().tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    discs = disc_masks(torch.tensor([0, 1, 5, 9]), 3, 3)
    assert discs.sum(dim=(1, 2)).tolist() == [0, 1, 5, 9]
    assert discs[2].int().tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]


def test_random_masks_have_the_exact_area_and_depend_only_on_the_image_index():
    areas = torch.tensor([0, 1, 7, 16, 4, 4])
    masks = random_masks(areas, 4, 4, first_index=10)
    assert masks.sum(dim=(1, 2)).tolist() == areas.tolist()
    assert torch.equal(masks, random_masks(areas, 4, 4, first_index=10))  # same seed, same masks
    assert not torch.equal(masks[4], masks[5])  # two images, two draws
    # Image 12's ranking is the same whichever batch it comes in.
    assert torch.equal(random_ranks(5, 4, 4, first_index=10)[2:], random_ranks(3, 4, 4, first_index=12))


def test_random_masks_are_uniform():
    # 4 pixels of 16 over 4000 images: each pixel is picked 1/4 of the time, and the overlap
    # with a fixed 4-pixel object is hypergeometric, mean 4 * 4 / 16 = 1 (se about 0.012).
    masks = random_masks(torch.full((4000,), 4), 4, 4, first_index=0)
    assert torch.allclose(masks.double().mean(dim=0), torch.full((4, 4), 0.25, dtype=torch.float64), atol=0.03)
    overlap = masks[:, :2, :2].sum(dim=(1, 2)).double().mean()
    assert abs(float(overlap) - 1.0) < 0.06


# --------------------------------------------------------------------------- in the metric
def test_disc_baseline_by_hand(build, run_metric, make_batch):
    # 5x5, model mask = object = the middle column (5 pixels). The 5-pixel centred disc is
    # the plus around (2, 2): it shares (1, 2), (2, 2), (3, 2) with the column: IoU 3 / (5 + 5 - 3).
    column = square(5, slice(None), 2)
    result = run_metric(build("attention-iou", overlay_images=0), object_batch(make_batch, column, column), 1)
    assert result["attn_object_iou/model"] == 1.0
    assert result["attn_object_iou_disc/model"] == pytest.approx(3 / 7)
    assert result["attn_object_iou_random/model"] < 1.0


def test_exact_attention_beats_both_baselines(build, run_metric, make_batch):
    # 4x4, model mask = object = the top-left 2x2 block. The 4-pixel disc is the central
    # 2x2 block: it shares pixel (1, 1) with the object: IoU 1 / 7.
    corner = square(4, slice(0, 2), slice(0, 2), count=6)
    result = run_metric(build("attention-iou", overlay_images=0), object_batch(make_batch, corner, corner), 4)
    assert result["attn_object_iou/model"] == 1.0
    assert result["attn_object_iou_disc/model"] == pytest.approx(1 / 7)
    assert 0.0 <= result["attn_object_iou_random/model"] < 1.0
    # The random figure is the mean over images 0..5 of the IoU of each image's own draw.
    drawn = random_masks(torch.full((6,), 4), 4, 4, first_index=0)
    by_hand = ((drawn & corner).sum(dim=(1, 2)).double() / (drawn | corner).sum(dim=(1, 2)).double()).mean()
    assert result["attn_object_iou_random/model"] == pytest.approx(float(by_hand), rel=1e-12)


def test_random_baseline_is_deterministic_and_has_the_model_mask_area(build, run_metric, make_batch):
    # Against an object covering the whole image, any mask's IoU is its area / 16: the
    # baselines read exactly the model's mean area fraction only if they have its area.
    red = torch.zeros(5, 4, 4, dtype=torch.bool)
    for index, pixels in enumerate((1, 3, 6, 11, 15)):
        red[index].view(-1)[:pixels] = True
    everything = torch.ones(5, 4, 4, dtype=torch.bool)
    batch = object_batch(make_batch, red, everything)
    metric = build("attention-iou", overlay_images=0)
    first = run_metric(metric, batch, 2)
    assert figures(first) == pytest.approx([(1 + 3 + 6 + 11 + 15) / 16 / 5] * 3)
    # A different object: the same random figure from a fresh metric, a second compute,
    # and (images seeded by their index) another batch size.
    corner = square(4, slice(0, 2), slice(0, 2), count=5)
    batch = object_batch(make_batch, red, corner)
    again = run_metric(build("attention-iou", overlay_images=0), batch, 2)
    assert run_metric(metric, batch, 2) == again and metric.compute() == again
    assert run_metric(metric, batch, 3) == pytest.approx(again, rel=1e-12)


def test_empty_masks_count_or_are_skipped_alike_in_all_three(build, run_metric, make_batch):
    # Images: (a) black, so an empty model mask, against an object: 0 in all three;
    # (b) model mask = object = top-left 2x2 block; (c) model mask on an empty object: 0 in
    # all three; (d) empty model mask and empty object: no IoU, left out of all three.
    corner = square(4, slice(0, 2), slice(0, 2))[0]
    nothing = torch.zeros(4, 4, dtype=torch.bool)
    red = torch.stack([nothing, corner, corner, nothing])
    objects = torch.stack([corner, corner, nothing, nothing])
    only_d = run_metric(build("attention-iou", overlay_images=0), object_batch(make_batch, red[3:], objects[3:]), 1)
    assert all(value != value for value in figures(only_d))  # nan: no image counted
    # Image (b) alone, placed where it sits in the split (offset 1), for its random draw.
    metric = build("attention-iou", overlay_images=0)
    metric.reset()
    metric.update(object_batch(make_batch, red[1:2], objects[1:2], offset=1))
    random_b = metric.compute()["attn_object_iou_random/model"]
    result = run_metric(build("attention-iou", overlay_images=0), object_batch(make_batch, red, objects), 2)
    assert figures(result) == pytest.approx([1 / 3, random_b / 3, 1 / 7 / 3])


def test_no_object_masks_no_baselines(build, run_metric, make_batch):
    corner = square(4, slice(0, 2), slice(0, 2))
    batch = object_batch(make_batch, corner, corner)
    batch = replace(batch, masks=None)
    assert not any(key.startswith("attn_object_iou") for key in run_metric(build("attention-iou"), batch, 1))
