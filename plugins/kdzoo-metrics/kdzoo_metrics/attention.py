"""Attention maps of CNNs and ViTs, as the study compares them; reusable by reports and plots.

Every method gives a raw low-resolution map per image; :func:`attention_maps` then
upsamples it bilinearly to the input size and min-max normalises it per image (both in
float64), so the result is ``(B, H, W)`` in [0, 1] and a threshold (0.4 in the study)
makes it a mask. A constant map (spread within float32 rounding of its magnitude, see
``CONSTANT_RTOL``) normalises to all 0: an empty mask.

Methods:

- ``cam``: class activation map as the study authors compute it: the last feature
  map through the linear head's weights used as a 1x1 conv, summed over all classes.
- ``cam-predicted``: the same for the predicted class only (Zhou et al. 2016).
- ``gradcam``: Grad-CAM (Selvaraju et al. 2017) of the predicted class at any conv layer.
- ``rollout``: attention rollout (Abnar & Zuidema 2020) through all attention layers.
- ``cls-attention``: the last layer's CLS-token attention, heads averaged.
- ``auto``: ``rollout`` for networks with attention taps (ViTs), else ``cam``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.api import Network
from kdzoo.api import KdzooError
from kdzoo.api.taps import tapped
from kdzoo_metrics.predictions import predicted_class

METHODS = ("cam", "cam-predicted", "gradcam", "rollout", "cls-attention")
NORMALISE_EPS = 1e-8  # the authors' guard in the min-max denominator
# A map whose spread (max - min) is at most this fraction of its magnitude (max |value|)
# is constant: about 8 float32 ulps, the rounding noise that float32 arithmetic (the
# CAM's einsum, bilinear upsampling) leaves on a constant map. The authors' absolute
# eps does not catch it: 3.7 everywhere, upsampled 8x8 -> 32x32 in float32, varies by
# 5e-7, which min-max would stretch to [0, 1].
CONSTANT_RTOL = 1e-6


# --------------------------------------------------------------------------- method choice
def resolve_method(network: Network, method: str = "auto") -> str:
    """The concrete method for ``network`` (``auto`` picks by architecture)."""
    if method == "auto":
        if network.attention:
            return "rollout"
        if network.cam is not None:
            return "cam"
        raise KdzooError(
            f"{type(network.body).__name__} has neither attention taps nor a CamHead: "
            "choose method 'gradcam' with a gradcam_layer"
        )
    if method not in METHODS:
        raise KdzooError(f"unknown attention method '{method}'; choose one of auto, {', '.join(METHODS)}")
    if method in ("cam", "cam-predicted") and network.cam is None:
        raise KdzooError(f"method '{method}' needs a network with a CamHead ({type(network.body).__name__} has none)")
    if method in ("rollout", "cls-attention") and not network.attention:
        raise KdzooError(f"method '{method}' needs attention taps ({type(network.body).__name__} has none)")
    return method


def gradcam_layer_of(network: Network, layer: str | None) -> str:
    if layer is not None:
        return layer
    if network.cam is None:
        raise KdzooError(f"gradcam needs a gradcam_layer: {type(network.body).__name__} has no CamHead to default to")
    return network.cam.features


def required_taps(network: Network, method: str) -> list[str]:
    """Module paths whose forward outputs ``method`` reads (Grad-CAM runs its own forward)."""
    method = resolve_method(network, method)
    if method in ("cam", "cam-predicted"):
        return [network.cam.features]
    if method in ("rollout", "cls-attention"):
        return list(network.attention)
    return []


# --------------------------------------------------------------------------- raw maps
def class_activation_map(feature_map: Tensor, classifier_weight: Tensor, classes: Tensor | None = None) -> Tensor:
    """``(B, h, w)`` CAM from a ``(B, C, h, w)`` feature map and a ``(K, C)`` head weight.

    With ``classes`` (``(B,)``), the map of that class per image; without, the sum over
    all classes (the authors' ``conv(features).sum(dim=1)``). The head's bias adds a
    constant per map, which min-max normalisation removes, so it is left out.
    """
    feature_map, weight = feature_map.float(), classifier_weight.float().to(feature_map.device)
    if feature_map.ndim != 4 or weight.shape[1] != feature_map.shape[1]:
        raise KdzooError(
            f"CAM needs a (B, C, h, w) feature map matching the head's {weight.shape[1]} inputs, "
            f"got {tuple(feature_map.shape)}"
        )
    per_image_weight = weight.sum(dim=0).expand(len(feature_map), -1) if classes is None else weight[classes.long()]
    return torch.einsum("bc,bchw->bhw", per_image_weight, feature_map)


def _first_tensor(output: object) -> Tensor:
    if isinstance(output, Tensor):
        return output
    for item in output if isinstance(output, (tuple, list)) else ():
        if isinstance(item, Tensor):
            return item
    raise KdzooError(f"hooked module returned {type(output).__name__}, not a tensor")


def grad_cam(network: Network, images: Tensor, layer: str, classes: Tensor | None = None) -> Tensor:
    """``(B, h, w)`` Grad-CAM: ReLU of the layer's activations weighted by the spatial mean
    of the class score's gradient. ``classes`` defaults to the predicted ones.

    Runs its own forward with gradients enabled (evaluation runs under ``no_grad``);
    the input is made to require grad so that frozen networks still build a graph.
    Parameters' ``.grad`` are left untouched and the network's mode is not changed.
    """
    captured: dict[str, Tensor] = {}

    def keep(_module: nn.Module, _inputs: object, output: object) -> None:
        captured["activation"] = _first_tensor(output)

    handle = network.submodule(layer).register_forward_hook(keep)
    try:
        with torch.enable_grad():
            inputs = images.detach().float().requires_grad_(True)
            logits = network(inputs).float()
            activation = captured["activation"]
            if activation.ndim != 4:
                raise KdzooError(f"Grad-CAM layer '{layer}' must output (B, C, h, w), got {tuple(activation.shape)}")
            if classes is None:
                classes = predicted_class(logits)
            score = logits.gather(1, classes.long().view(-1, 1).to(logits.device)).sum()
            (gradient,) = torch.autograd.grad(score, activation)
    finally:
        handle.remove()
    channel_weights = gradient.float().mean(dim=(2, 3), keepdim=True)
    return F.relu((channel_weights * activation.detach().float()).sum(dim=1))


def _cls_row_to_grid(matrix: Tensor) -> Tensor:
    """The CLS token's row without the prefix-token columns, as a ``(B, g, g)`` patch grid.

    Tokens are ``[CLS, other prefix tokens (distillation, registers)..., g*g patches]``;
    the number of prefix tokens is what is left after the largest square grid.
    """
    tokens = matrix.shape[-1]
    side = math.isqrt(tokens - 1)
    if side == 0:
        raise KdzooError(f"attention over {tokens} tokens has no patch grid")
    prefix = tokens - side * side
    return matrix[:, 0, prefix:].reshape(len(matrix), side, side)


def attention_rollout(attentions: Sequence[Tensor]) -> Tensor:
    """``(B, g, g)`` attention rollout from per-layer ``(B, heads, N, N)`` probabilities,
    shallow to deep: average heads, add the identity (the residual path), renormalise
    rows, multiply through the layers (deepest on the left), take the CLS row."""
    joint: Tensor | None = None
    for attention in attentions:
        mixed = attention.float().mean(dim=1)
        mixed = mixed + torch.eye(mixed.shape[-1], device=mixed.device, dtype=mixed.dtype)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        joint = mixed if joint is None else mixed @ joint
    if joint is None:
        raise KdzooError("attention rollout needs at least one attention layer")
    return _cls_row_to_grid(joint)


def cls_attention(attention: Tensor) -> Tensor:
    """``(B, g, g)`` CLS-token attention of one layer's ``(B, heads, N, N)`` probabilities."""
    return _cls_row_to_grid(attention.float().mean(dim=1))


def _attention_probabilities(value: object) -> Tensor | None:
    """The ``(B, heads, N, N)`` probabilities in a tapped output, or None if not there
    (a core tap that kept only the first item of an ``(output, probs)`` tuple)."""
    if isinstance(value, (tuple, list)):
        value = value[1] if len(value) > 1 else None
    if not (isinstance(value, Tensor) and value.ndim == 4 and value.shape[-1] == value.shape[-2]):
        return None
    # A (B, C, H, H) feature map has the same shape: probabilities are rows summing to 1.
    rows = value.float().sum(dim=-1)
    if bool((value >= 0).all()) and torch.allclose(rows, torch.ones_like(rows), atol=1e-3):
        return value
    return None


# --------------------------------------------------------------------------- normalised maps
def min_max_normalise(maps: Tensor) -> Tensor:
    """Per-image min-max scaling of ``(B, H, W)`` maps to [0, 1]: ``(x - min) / (max - min + 1e-8)``
    (the authors' formula), computed in float64.

    A constant map becomes all 0 (so its mask is empty at any threshold), and so does a
    map whose spread ``max - min`` is at most ``CONSTANT_RTOL`` times its magnitude:
    that spread is float32 rounding noise, not attention. Returns float32 (float64 for
    float64 input).
    """
    flat = maps.flatten(1).double()
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    spread = high - low
    constant = spread <= CONSTANT_RTOL * torch.maximum(low.abs(), high.abs())
    scaled = torch.where(constant, torch.zeros_like(flat), (flat - low) / (spread + NORMALISE_EPS))
    return scaled.to(torch.float64 if maps.dtype == torch.float64 else torch.float32).view(maps.shape)


def upsample_and_normalise(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of ``(B, h, w)`` maps to ``size`` then per-image min-max
    normalisation, both in float64 (float32 upsampling adds rounding noise that min-max
    would stretch); returns float32 maps in [0, 1]."""
    resized = F.interpolate(maps.double().unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
    return min_max_normalise(resized).float()


def binary_masks(maps: Tensor, threshold: float) -> Tensor:
    """``maps > threshold`` (strict, as the authors threshold)."""
    return maps > threshold


def mask_overlap(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image intersection and union pixel counts of two ``(B, H, W)`` boolean masks."""
    a, b = a.bool(), b.bool().to(a.device)
    return (a & b).flatten(1).sum(dim=1), (a | b).flatten(1).sum(dim=1)


def raw_attention_maps(
    network: Network,
    images: Tensor,
    features: Mapping[str, object] | None = None,
    method: str = "auto",
    *,
    logits: Tensor | None = None,
    classes: Tensor | None = None,
    gradcam_layer: str | None = None,
) -> Tensor:
    """Low-resolution, unnormalised ``(B, h, w)`` maps (see :func:`attention_maps`)."""
    method = resolve_method(network, method)
    if method == "gradcam":
        return grad_cam(network, images, gradcam_layer_of(network, gradcam_layer), classes)

    paths = required_taps(network, method)
    found = dict(features or {})
    if method in ("rollout", "cls-attention"):
        found = {p: probs for p in paths if (probs := _attention_probabilities(found.get(p))) is not None}
    needs_logits = method == "cam-predicted" and classes is None and logits is None
    if needs_logits or any(p not in found for p in paths):
        # Not (usefully) tapped by the caller: run the forward ourselves, keeping raw
        # outputs so that (context, probs) tuples still hold the probabilities.
        with torch.no_grad(), tapped(network, paths, raw=True) as captured:
            logits = network(images)
        found = dict(captured)
        if method in ("rollout", "cls-attention"):
            found = {p: _attention_probabilities(found[p]) for p in paths}
            missing = [p for p, probs in found.items() if probs is None]
            if missing:
                raise KdzooError(f"attention taps {missing} did not output (B, heads, N, N) probabilities")
        else:
            found = {p: _first_tensor(found[p]) for p in paths}

    if method in ("cam", "cam-predicted"):
        if method == "cam-predicted" and classes is None:
            classes = predicted_class(logits)
        weight = network.submodule(network.cam.classifier).weight
        return class_activation_map(found[network.cam.features], weight, classes if method == "cam-predicted" else None)
    if method == "rollout":
        return attention_rollout([found[p] for p in paths])
    return cls_attention(found[paths[-1]])


def attention_maps(
    network: Network,
    images: Tensor,
    features: Mapping[str, object] | None = None,
    method: str = "auto",
    *,
    logits: Tensor | None = None,
    classes: Tensor | None = None,
    gradcam_layer: str | None = None,
) -> Tensor:
    """``(B, H, W)`` attention maps in [0, 1] at the size of ``images`` (float, [0, 1]).

    ``features`` are the network's tapped outputs for these images by module path
    (``EvalBatch.features[role]``); whatever is missing is recomputed with a forward
    of ``network``. ``logits`` (or explicit ``classes``) give the predicted class for
    ``cam-predicted``; Grad-CAM uses ``classes`` or its own prediction.
    """
    maps = raw_attention_maps(
        network, images, features, method, logits=logits, classes=classes, gradcam_layer=gradcam_layer
    )
    return upsample_and_normalise(maps, (images.shape[-2], images.shape[-1]))
