import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdzoo.api import CamHead, Network
from kdzoo.api.taps import tapped
from kdzoo_metrics.attention import (
    attention_maps,
    attention_rollout,
    binary_masks,
    cls_attention,
    mask_overlap,
    min_max_normalise,
    raw_attention_maps,
    upsample_and_normalise,
)


def gap_linear_network(head_weight, *, stride=1, channel_weight=None) -> Network:
    """A CNN whose CAM is computable by hand: 1x1 conv features (+ ReLU), global average
    pooling, linear head. Identity normalisation so features are the raw pixels."""
    head_weight = torch.as_tensor(head_weight, dtype=torch.float32)
    classes, channels = head_weight.shape
    conv = nn.Conv2d(3, channels, 1, stride=stride, bias=False)
    head = nn.Linear(channels, classes)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels, 3).view(channels, 3, 1, 1) if channel_weight is None else channel_weight)
        head.weight.copy_(head_weight)
        head.bias.zero_()
    body = nn.Sequential()
    body.add_module("features", nn.Sequential(conv, nn.ReLU()))
    body.add_module("pool", nn.AdaptiveAvgPool2d(1))
    body.add_module("flatten", nn.Flatten())
    body.add_module("head", head)
    network = Network(
        body, num_classes=classes, mean=(0, 0, 0), std=(1, 1, 1), cam=CamHead(features="features", classifier="head")
    )
    return network.eval()


def rgb(red, green, blue=None):
    red = torch.tensor(red, dtype=torch.float32)
    green = torch.tensor(green, dtype=torch.float32)
    blue = torch.zeros_like(red) if blue is None else torch.tensor(blue, dtype=torch.float32)
    return torch.stack([red, green, blue])[None]


# --------------------------------------------------------------------------- CAM
def test_cam_by_hand_summed_and_predicted():
    # Features = (R, G); head rows: class 0 <- R, class 1 <- 3 G, class 2 <- R + G.
    network = gap_linear_network([[1, 0], [0, 3], [1, 1]])
    image = rgb([[1, 0], [0, 0]], [[0, 0], [0, 1]])
    # Summed over classes: weights (2, 4) -> 2 R + 4 G.
    assert raw_attention_maps(network, image, method="cam").tolist() == [[[2, 0], [0, 4]]]
    # Logits = W @ mean(R, G) = W @ (1/4, 1/4) = (0.25, 0.75, 0.5): class 1, map 3 G.
    assert raw_attention_maps(network, image, method="cam-predicted").tolist() == [[[0, 0], [0, 3]]]
    # Min-max normalised at the input size.
    assert torch.allclose(attention_maps(network, image, method="cam"), torch.tensor([[[0.5, 0], [0, 1]]]), atol=1e-6)


def test_cam_is_upsampled_bilinearly_and_min_max_normalised():
    network = gap_linear_network([[1, 0], [0, 2]], stride=2)  # 4x4 input -> 2x2 features
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 4, 4, generator=g)
    maps = attention_maps(network, images, method="cam")
    assert maps.shape == (3, 4, 4)
    flat = maps.flatten(1)
    assert torch.allclose(flat.min(dim=1).values, torch.zeros(3))
    assert torch.allclose(flat.max(dim=1).values, torch.ones(3), atol=1e-6)
    by_hand = images[:, 0, ::2, ::2] * 1 + images[:, 1, ::2, ::2] * 2  # the stride-2 1x1 conv keeps even pixels
    expected = min_max_normalise(F.interpolate(by_hand[:, None], size=(4, 4), mode="bilinear", align_corners=False)[:, 0])
    assert torch.allclose(maps, expected, atol=1e-6)


def test_tapped_features_are_used_instead_of_a_new_forward():
    network = gap_linear_network([[1, 0], [0, 1]])
    image = rgb([[1, 0], [0, 0]], [[0, 0], [0, 1]])
    fake = {"features": torch.tensor([[[[0.0, 5.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]]]])}
    assert raw_attention_maps(network, image, fake, method="cam").tolist() == [[[0, 5], [1, 0]]]


def test_gradcam_equals_cam_for_gap_linear_network_with_relu_features():
    # logit_c = sum_k W_ck mean(F_k): d logit_c / d F_k = W_ck / (h w), so Grad-CAM is
    # ReLU(CAM_c) / (h w): the predicted-class CAM up to normalisation when W_c >= 0.
    g = torch.Generator().manual_seed(0)
    head = torch.rand(4, 3, generator=g)
    mixing = torch.randn(3, 3, 1, 1, generator=g)
    network = gap_linear_network(head, channel_weight=mixing)
    for parameter in network.parameters():
        parameter.requires_grad_(False)  # a frozen teacher
    images = torch.rand(5, 3, 6, 6, generator=g)
    with torch.no_grad():  # as evaluation runs
        gradcam = attention_maps(network, images, method="gradcam")
        cam = attention_maps(network, images, method="cam-predicted", logits=network(images))
    assert torch.allclose(gradcam, cam, atol=1e-5)
    assert all(p.grad is None for p in network.parameters())


def test_gradcam_at_another_layer():
    network = gap_linear_network([[1, 0], [0, 1]])
    images = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    maps = attention_maps(network, images, method="gradcam", gradcam_layer="features.0")
    assert maps.shape == (2, 4, 4) and float(maps.max()) <= 1.0


# --------------------------------------------------------------------------- constant maps
@pytest.mark.parametrize("value", [3.7, -3.7, 123.456, 1e5 + 0.3, 1e-3, 0.0])
def test_constant_maps_normalise_to_zero_and_give_empty_masks(value):
    # A constant map (here 3.7 everywhere) has no "where": min-max gives 0 and the mask
    # is empty. Float32 bilinear upsampling leaves rounding noise of about 1e-7 in it,
    # which a plain min-max stretches to [0, 1] (904 of 1024 pixels above 0.4 at 3.7).
    raw = torch.full((2, 8, 8), value)
    for size in ((8, 8), (32, 32), (224, 224)):
        normalised = upsample_and_normalise(raw, size)
        assert normalised.shape == (2, *size)
        assert not bool(binary_masks(normalised, 0.4).any()), (value, size)
        assert bool((normalised == 0).all()), (value, size)
    assert bool((min_max_normalise(torch.full((1, 32, 32), value)) == 0).all())
    if value != 0:
        # Rounding-level noise on a constant is still a constant: one pixel a float32 ulp up.
        noisy = torch.full((1, 32, 32), value)
        noisy[0, 3, 5] = noisy[0, 3, 5].nextafter(torch.tensor(float("inf")))
        assert float(noisy.max() - noisy.min()) > 0
        assert bool((min_max_normalise(noisy) == 0).all())


def test_varying_maps_are_still_stretched_to_the_unit_interval():
    g = torch.Generator().manual_seed(5)
    raw = torch.stack([
        torch.rand(8, 8, generator=g),
        1000 + 0.01 * torch.rand(8, 8, generator=g),  # a small spread on a large offset
        -torch.rand(8, 8, generator=g) * 1e-4,  # a small map
    ])
    normalised = upsample_and_normalise(raw, (32, 32))
    flat = normalised.flatten(1)
    assert torch.allclose(flat.min(dim=1).values, torch.zeros(3))
    assert torch.allclose(flat.max(dim=1).values, torch.ones(3), atol=1e-4)  # the authors' eps 1e-8 on a 1e-4 spread
    # As the float64 computation by hand.
    resized = F.interpolate(raw.double()[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0].flatten(1)
    low, high = resized.min(dim=1, keepdim=True).values, resized.max(dim=1, keepdim=True).values
    expected = ((resized - low) / (high - low + 1e-8)).view(3, 32, 32)
    assert torch.allclose(normalised.double(), expected, atol=1e-6)
    assert 0 < int(binary_masks(normalised, 0.4).sum(dim=(1, 2)).min())


def test_constant_cams_after_upsampling_give_no_iou(build, run_metric, make_batch):
    # 32x32 images, red 3.7 everywhere; a stride-4 1x1 conv gives 8x8 CAMs: t1 (R) is 3.7
    # everywhere and t2 (G) 0: both constant, so both masks are empty and the image has
    # no IoU (nan); the object IoU of an empty mask with a non-empty object is 0.
    images = torch.zeros(2, 3, 32, 32)
    images[:, 0] = 3.7
    networks = {
        "t1": gap_linear_network([[1, 0, 0], [0, 0, 0]], stride=4),
        "t2": gap_linear_network([[0, 1, 0], [0, 0, 0]], stride=4),
    }
    assert raw_attention_maps(networks["t1"], images, method="cam").shape == (2, 8, 8)
    for network in networks.values():
        assert bool((attention_maps(network, images, method="cam") == 0).all())
    logits = {role: network(images) for role, network in networks.items()}
    objects = torch.zeros(2, 32, 32, dtype=torch.bool)
    objects[:, 8:24, 8:24] = True
    batch = make_batch(logits, torch.zeros(2, dtype=torch.long), images=images, networks=networks, student=None,
                       masks=objects)
    result = run_metric(build("attention-iou", overlay_images=0), batch, 2)
    objects_keys = {f"attn_object_iou{kind}/{role}" for kind in ("", "_random", "_disc") for role in ("t1", "t2")}
    assert set(result) == {"attn_iou/t1~t2", "attn_iou_per_batch/t1~t2"} | objects_keys
    assert result["attn_iou/t1~t2"] != result["attn_iou/t1~t2"]  # nan
    assert result["attn_iou_per_batch/t1~t2"] != result["attn_iou_per_batch/t1~t2"]
    assert all(result[key] == 0.0 for key in objects_keys)  # empty masks (and so empty baselines): 0


# --------------------------------------------------------------------------- ViT maps
def hand_attention():
    """Two layers over 5 tokens (CLS + a 2x2 patch grid), two heads each.

    Layer 1: head 0 is the identity; head 1 is too, except that token 1 attends to
    token 3. Layer 2 (both heads): CLS attends to token 1, every other token to itself.
    """
    eye = torch.eye(5)
    one_to_three = eye.clone()
    one_to_three[1] = torch.tensor([0.0, 0, 0, 1, 0])
    layer1 = torch.stack([eye, one_to_three])[None]
    cls_to_one = eye.clone()
    cls_to_one[0] = torch.tensor([0.0, 1, 0, 0, 0])
    layer2 = torch.stack([cls_to_one, cls_to_one])[None]
    return layer1, layer2


def test_rollout_on_hand_made_two_layer_attention():
    layer1, layer2 = hand_attention()
    # Heads averaged, identity added, rows renormalised:
    #   layer 1: row 0 = e0, row 1 = [0, .75, 0, .25, 0]
    #   layer 2: row 0 = [.5, .5, 0, 0, 0]
    # Rollout (layer 2 @ layer 1), CLS row = .5 * e0 + .5 * [0, .75, 0, .25, 0]
    #   = [.5, .375, 0, .125, 0]: CLS reaches token 3 through token 1.
    # Without the CLS column, on the 2x2 grid: [[.375, 0], [.125, 0]]. (The product in the
    # wrong order would give [[.5, 0], [0, 0]].)
    rollout = attention_rollout([layer1, layer2])
    assert torch.allclose(rollout, torch.tensor([[[0.375, 0.0], [0.125, 0.0]]]))
    # Last-layer CLS attention: heads averaged, CLS row, patches only.
    assert cls_attention(layer2).tolist() == [[[1.0, 0.0], [0.0, 0.0]]]


def test_rollout_drops_extra_prefix_tokens():
    # 6 tokens = CLS + a distillation token + 2x2 patches; uniform attention stays uniform.
    attention = torch.full((1, 1, 6, 6), 1 / 6)
    assert attention_rollout([attention]).shape == (1, 2, 2)


class FixedAttention(nn.Module):
    """Returns ``(input, probabilities)`` as HF attention modules do."""

    def __init__(self, probabilities):
        super().__init__()
        self.register_buffer("probabilities", probabilities)

    def forward(self, x):
        return x, self.probabilities.expand(len(x), -1, -1, -1)


class TinyViT(nn.Module):
    def __init__(self):
        super().__init__()
        layer1, layer2 = hand_attention()
        self.blocks = nn.ModuleList([FixedAttention(layer1), FixedAttention(layer2)])
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        for block in self.blocks:
            x, _ = block(x)
        return self.head(x.mean(dim=(2, 3)))


def tiny_vit() -> Network:
    return Network(TinyViT(), num_classes=2, attention=["blocks.0", "blocks.1"], family="vit").eval()


def test_vit_maps_from_own_forward_and_from_raw_taps():
    network, images = tiny_vit(), torch.rand(2, 3, 4, 4)
    expected = attention_rollout(list(hand_attention()))
    # No features: the function runs the forward with raw taps itself ("auto" = rollout).
    assert torch.allclose(raw_attention_maps(network, images), expected.expand(2, -1, -1))
    # Raw tuple taps as the core could hand them over.
    with tapped(network, network.attention, raw=True) as captured:
        network(images)
    assert torch.allclose(raw_attention_maps(network, images, captured, "cls-attention"), torch.tensor([[[1.0, 0], [0, 0]]]))
    # A tap that kept only the first tensor of the tuple is not usable: recomputed.
    with tapped(network, network.attention) as first_only:
        network(images)
    assert torch.allclose(raw_attention_maps(network, images, first_only, "rollout"), expected.expand(2, -1, -1))
    assert attention_maps(network, images).shape == (2, 4, 4)


# --------------------------------------------------------------------------- IoU
def test_iou_on_known_masks():
    a = torch.tensor([[[1, 1], [0, 0]], [[1, 1], [1, 1]]]).bool()
    b = torch.tensor([[[1, 0], [1, 0]], [[1, 1], [1, 1]]]).bool()
    intersection, union = mask_overlap(a, b)
    assert intersection.tolist() == [1, 4] and union.tolist() == [3, 4]
    assert binary_masks(torch.tensor([0.4, 0.41, 1.0]), 0.4).tolist() == [False, True, True]


def iou_networks():
    # Features (R, G, B); summed-over-classes CAM weights: t1 -> R, t2 -> G, student -> R + G.
    return {
        "t1": gap_linear_network([[1, 0, 0], [0, 0, 0]]),
        "t2": gap_linear_network([[0, 1, 0], [0, 0, 0]]),
        "student": gap_linear_network([[1, 0, 0], [0, 1, 0]]),
    }


def test_attention_iou_metric_by_hand(build, run_metric, make_batch):
    # R = [[1, 0], [0, 0]], G = [[1, 1], [0, 0]]. Masks (> 0.4 after min-max):
    #   t1 [[1, 0], [0, 0]]; t2 [[1, 1], [0, 0]]; student R + G = [[2, 1], [0, 0]] -> [[1, .5], [0, 0]] -> [[1, 1], [0, 0]].
    # Object mask [[1, 1], [1, 0]].
    image = rgb([[1, 0], [0, 0]], [[1, 1], [0, 0]])
    images = image.expand(5, -1, -1, -1)
    networks = iou_networks()
    logits = {role: network(images) for role, network in networks.items()}
    masks = torch.tensor([[1, 1], [1, 0]]).bool().expand(5, -1, -1)
    batch = make_batch(logits, torch.zeros(5, dtype=torch.long), images=images, networks=networks, masks=masks)
    metric = build("attention-iou", per_batch_size=2, overlay_images=0)
    assert metric.taps(networks) == {role: ["features"] for role in networks}
    result = run_metric(metric, batch, 2)
    expected = {
        "attn_iou/student~t1": 1 / 2,
        "attn_iou/student~t2": 1.0,
        "attn_iou/t1~t2": 1 / 2,
        "attn_object_iou/t1": 1 / 3,
        "attn_object_iou/t2": 2 / 3,
        "attn_object_iou/student": 2 / 3,
        # On a 2x2 image all four pixels tie for the centre: discs fill in raster order,
        # 1 pixel [[1, 0], [0, 0]] for t1, 2 pixels [[1, 1], [0, 0]] for t2 and the student.
        "attn_object_iou_disc/t1": 1 / 3,
        "attn_object_iou_disc/t2": 2 / 3,
        "attn_object_iou_disc/student": 2 / 3,
    }
    expected |= {key.replace("attn_iou/", "attn_iou_per_batch/"): value for key, value in expected.items() if "~" in key}
    random = {key for key in result if key.startswith("attn_object_iou_random/")}  # see test_object_baselines.py
    assert random == {"attn_object_iou_random/t1", "attn_object_iou_random/t2", "attn_object_iou_random/student"}
    assert {key: value for key, value in result.items() if key not in random} == pytest.approx(expected)


def test_per_image_and_per_batch_iou_differ(build, run_metric, make_batch):
    # t1 sees R, t2 sees G. Image 1: masks [[1, 0], [0, 0]] and [[1, 1], [0, 0]]: IoU 1/2.
    # Image 2: G = [[1, 1], [1, 0]]: masks 1 and 3 pixels: IoU 1/3. Per image: (1/2 + 1/3) / 2.
    # Pooled over the run of two images (the authors' per-batch IoU): (1 + 1) / (2 + 3).
    images = torch.cat([rgb([[1, 0], [0, 0]], [[1, 1], [0, 0]]), rgb([[1, 0], [0, 0]], [[1, 1], [1, 0]])])
    networks = {role: net for role, net in iou_networks().items() if role != "student"}
    logits = {role: network(images) for role, network in networks.items()}
    batch = make_batch(logits, torch.zeros(2, dtype=torch.long), images=images, networks=networks, student=None)
    result = run_metric(build("attention-iou", per_batch_size=2, overlay_images=0), batch, 1)
    assert result == pytest.approx({"attn_iou/t1~t2": 5 / 12, "attn_iou_per_batch/t1~t2": 2 / 5})


def test_object_iou_in_a_train_run_with_synthetic_mask(build, run_metric, make_batch):
    # A centred 2x2 square on a 4x4 image, drawn in the red channel: the CAM finds it exactly.
    square = torch.zeros(4, 4)
    square[1:3, 1:3] = 1
    images = torch.stack([square, torch.zeros(4, 4), torch.zeros(4, 4)])[None]
    network = gap_linear_network([[1, 0, 0], [0, 0, 0]])
    batch = make_batch(
        {"model": network(images)},
        torch.zeros(1, dtype=torch.long),
        images=images,
        networks={"model": network},
        masks=square.bool()[None],
        teachers=(),
        student="model",
    )
    result = run_metric(build("attention-iou", overlay_images=0), batch, 1)
    assert set(result) == {"attn_object_iou/model", "attn_object_iou_random/model", "attn_object_iou_disc/model"}
    # The centred square is also the centred disc of its area.
    assert result["attn_object_iou/model"] == 1.0 and result["attn_object_iou_disc/model"] == 1.0


def test_constant_maps_give_no_iou(build, run_metric, make_batch):
    # Black images: every CAM is constant, 0 after min-max, so both masks are empty.
    images = torch.zeros(2, 3, 2, 2)
    networks = {role: net for role, net in iou_networks().items() if role != "student"}
    logits = {role: network(images) for role, network in networks.items()}
    batch = make_batch(logits, torch.zeros(2, dtype=torch.long), images=images, networks=networks, student=None)
    result = run_metric(build("attention-iou", overlay_images=0), batch, 2)
    assert set(result) == {"attn_iou/t1~t2", "attn_iou_per_batch/t1~t2"}
    assert all(value != value for value in result.values())  # nan


def test_cnn_teachers_and_vit_student_share_the_input_grid(build, run_metric, make_batch):
    images = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    networks = {"t1": gap_linear_network([[1, 0, 0], [0, 1, 0]]), "student": tiny_vit()}
    logits = {role: network(images) for role, network in networks.items()}
    batch = make_batch(logits, torch.zeros(3, dtype=torch.long), images=images, networks=networks, teachers=("t1",))
    result = run_metric(build("attention-iou", overlay_images=0), batch, 2)
    assert set(result) == {"attn_iou/student~t1", "attn_iou_per_batch/student~t1"}
    assert 0.0 <= result["attn_iou/student~t1"] <= 1.0


# --------------------------------------------------------------------------- overlays
def test_overlays_keep_the_first_images_and_every_models_map(build, run_metric, make_batch):
    # Integer pixel values over 255 survive the uint8 round trip exactly.
    images = torch.randint(0, 256, (5, 3, 4, 4), generator=torch.Generator().manual_seed(3)).float() / 255
    networks = iou_networks()
    logits = {role: network(images) for role, network in networks.items()}
    batch = make_batch(logits, torch.zeros(5, dtype=torch.long), images=images, networks=networks)
    result = run_metric(build("attention-iou", overlay_images=3), batch, 2)  # the first 3 straddle two batches
    assert torch.tensor(result["attn_overlay_images"], dtype=torch.uint8).tolist() == (images[:3] * 255).round().to(torch.uint8).tolist()
    for role, network in networks.items():
        expected = attention_maps(network, images[:3], method="cam").double().round(decimals=3)
        assert torch.tensor(result[f"attn_overlay/{role}"], dtype=torch.float64).equal(expected)
    assert "attn_iou/t1~t2" in result  # the IoU figures are still there


def test_overlays_of_a_train_run_are_thumbnails(build, run_metric, make_batch):
    # A train run has no pair to compare: its one map is still kept, at most 32 pixels a side.
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    network = gap_linear_network([[1, 0, 0], [0, 1, 0]])
    batch = make_batch({"model": network(images)}, torch.zeros(2, dtype=torch.long), images=images,
                       networks={"model": network}, teachers=(), student="model")
    result = run_metric(build("attention-iou"), batch, 2)
    assert set(result) == {"attn_overlay/model", "attn_overlay_images"}
    assert torch.tensor(result["attn_overlay/model"]).shape == (2, 32, 32)
    assert torch.tensor(result["attn_overlay_images"]).shape == (2, 3, 32, 32)
    # Area downsampling by 2 is the mean of each 2x2 block.
    expected = F.avg_pool2d(attention_maps(network, images, method="cam")[:, None], 2)[:, 0]
    assert torch.allclose(torch.tensor(result["attn_overlay/model"], dtype=torch.float64), expected.double(), atol=5e-4)
