"""Params models of the logit-zoo losses (torch-free: the hook module imports them).

Defaults are each method's published CIFAR-100 setting, as the reference code named in
the loss's docstring gives it; the loss weight itself is the spec's ``weight``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from kdzoo.api import Params


class WSLDParams(Params):
    temperature: float = Field(
        4.0, gt=0.0, description="Softmax temperature of the soft labels; T^2-scaled (CIFAR-100: 4, ImageNet: 2)."
    )


class NormKDParams(Params):
    t_norm: float = Field(
        1.5,
        gt=0.0,
        description="T_norm: each sample's temperature is T_norm times the std of its logits, teacher and "
        "student separately.",
    )


class RLDParams(Params):
    alpha: float = Field(1.0, ge=0.0, description="Weight of SCD (sample confidence distillation).")
    beta: float = Field(8.0, ge=0.0, description="Weight of MCD (masked correlation distillation).")
    temperature: float = Field(4.0, gt=0.0, description="Temperature of MCD; T^2-scaled.")
    scd_temperature: float | None = Field(
        None,
        gt=0.0,
        description="Temperature of SCD; unset: the same as temperature (the authors' --same-t, their CIFAR "
        "command); their config default without that flag is 1.",
    )
    warmup_epochs: int = Field(
        20, ge=0, description="Linear warm-up: the loss is multiplied by min(epoch/warmup, 1), epochs from 1; 0 disables."
    )


class ViewPolicy(Params):
    """The augmentation policy of a further view of each batch (``Loss.views``)."""

    name: str = Field(min_length=1, description="A registered augmentation policy (kdzoo plugins lists them).")
    params: dict[str, Any] = Field(default_factory=dict, description="Its params, as a spec's augmentation gives them.")


def reference_strong_view() -> ViewPolicy:
    """The strong view of the two-view CIFAR codes (CRLD's and MLKD's mdistiller forks): an
    independent RandomCrop(32, padding=4) + flip, then their FixMatch-style RandAugment(2, 10),
    which draws each of its 2 operations' magnitudes uniformly over the whole range (the 10
    is unused): torchvision's RandAugment at the middle magnitude, 15 of 30, is that draw's
    mean. Not reproduced: the random Cutout (side up to 16 px, grey) their RandAugment ends
    with, and the per-image operation draw (kdzoo's draws once per chunk of 16 images)."""
    return ViewPolicy(name="randaugment", params={"num_ops": 2, "magnitude": 15, "padding_mode": "zeros"})


class MLKDParams(Params):
    temperatures: list[float] = Field(
        default_factory=lambda: [2.0, 3.0, 4.0, 5.0, 6.0],
        min_length=1,
        description="Prediction augmentation: every level is computed at each of these temperatures and summed "
        "(authors: 4 from the config plus 3, 5, 2, 6).",
    )
    strong_view: ViewPolicy | None = Field(
        None,
        description="Unset: the one-view form (MLKD_NOAUG). Set: the authors' two-view KD_ours, with this policy's "
        "view of every batch (their CIFAR one: {name: randaugment, params: {num_ops: 2, magnitude: 15, "
        "padding_mode: zeros}}, see kdzoo_losses.params.reference_strong_view).",
    )
    strong_temperatures: list[float] = Field(
        default_factory=lambda: [3.0, 4.0, 5.0],
        description="Two views only: the unmasked instance-level KD (every temperature) reads the strong view at "
        "these temperatures and the weak view at the others (KD_ours: 4, 3, 5 strong; its 2 and 6 terms read the "
        "weak logits). All of temperatures: every term on the strong view.",
    )
    strong_ce_weight: float = Field(
        1.0 / 9.0,
        ge=0.0,
        description="Two views only: CE of the strong view, relative to the distillation terms (the term's weight "
        "multiplies both): the authors' CE_WEIGHT / KD_WEIGHT = 0.1 / 0.9, so weight 0.9 gives it 0.1 as the weak "
        "view's ce term.",
    )

    examples = ({"strong_view": {"name": "randaugment", "params": {"num_ops": 2, "magnitude": 15}}},)

    @field_validator("temperatures")
    @classmethod
    def _positive(cls, temperatures: list[float]) -> list[float]:
        if any(t <= 0 for t in temperatures):
            raise ValueError(f"temperatures must be positive, got {temperatures}")
        return temperatures

    @model_validator(mode="after")
    def _strong_among_temperatures(self) -> MLKDParams:
        extra = [t for t in self.strong_temperatures if t not in self.temperatures]
        if self.strong_view is not None and extra:
            raise ValueError(f"strong_temperatures {extra} are not among temperatures {self.temperatures}")
        return self


class CRLDParams(Params):
    temperature: float = Field(4.0, gt=0.0, description="Softmax temperature of every KD term; T^2-scaled (CRLD.TEMPERATURE).")
    within_weight: float = Field(
        2.0, ge=0.0, description="Within-view consistency: weak to weak and strong to strong (CRLD.WV_WEIGHT)."
    )
    cross_weight: float = Field(
        0.5, ge=0.0, description="Cross-view consistency: weak teacher to strong student and back (CRLD.CV_WEIGHT)."
    )
    tau_w: float = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="Within-view terms count a sample whose teacher confidence on the weak view is at least this "
        "(CRLD.TAU_W).",
    )
    tau_s: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="Cross-view terms count a sample whose teacher confidence on the strong view is at least this "
        "(CRLD.TAU_S).",
    )
    strong_ce_weight: float = Field(
        1.0,
        ge=0.0,
        description="CE of the strong view (CRLD.CE_WEIGHT; the weak view's CE is the spec's ce term, at the same "
        "weight in the recipe).",
    )
    strong_view: ViewPolicy = Field(
        default_factory=reference_strong_view,
        description="The strong view's augmentation policy (default: the authors' CIFAR one, see "
        "kdzoo_losses.params.reference_strong_view).",
    )


class CSKDParams(Params):
    temperature: float = Field(4.0, gt=0.0, description="Softmax temperature of both predictions; T^2-scaled.")


class SDDParams(Params):
    base: Literal["kd", "dkd"] = Field(
        "kd", description="The logit loss applied to every region: 'kd' (SD-KD) or 'dkd' (SD-DKD)."
    )
    scales: list[int] = Field(
        default_factory=lambda: [1, 2, 4],
        min_length=1,
        description="Pooling grids M: the last feature map is average-pooled to s x s regions for each s, each "
        "region classified by the network's own head; must start with 1 (the global region).",
    )
    temperature: float = Field(4.0, gt=0.0, description="Temperature of the base loss; T^2-scaled.")
    complementary_weight: float = Field(
        2.0,
        ge=0.0,
        description="Weight of regions whose teacher prediction is right while the global one is wrong, or the "
        "reverse (consistent regions weigh 1).",
    )
    alpha: float = Field(1.0, ge=0.0, description="base 'dkd' only: weight of TCKD.")
    beta: float = Field(8.0, ge=0.0, description="base 'dkd' only: weight of NCKD.")
    warmup_epochs: int = Field(
        0,
        ge=0,
        description="Linear warm-up min(epoch/warmup, 1), epochs from 1; 0 disables (authors: none for SD-KD, "
        "20 for SD-DKD).",
    )

    examples = ({"base": "dkd", "scales": [1, 2], "warmup_epochs": 20},)

    @field_validator("scales")
    @classmethod
    def _global_first(cls, scales: list[int]) -> list[int]:
        if scales[0] != 1 or any(b <= a for a, b in zip(scales, scales[1:])):
            raise ValueError(f"scales must be increasing and start with 1 (the global region), got {scales}")
        return scales


class CATKDParams(Params):
    resolution: int = Field(
        2, ge=1, description="Side of the transferred CAMs after average pooling (the authors' CAM_RESOLUTION)."
    )
    normalize: bool = Field(
        False,
        description="L2-normalise each pooled CAM before the MSE (IF_NORMALIZE; their ResNet-32x4 -> ResNet-8x4 "
        "config: off).",
    )

    examples = ({"normalize": True, "resolution": 4},)


class DMLParams(Params):
    temperature: float = Field(
        1.0, gt=0.0, description="Softmax temperature of both sides; the authors use 1 (T^2-scaled otherwise)."
    )


class DeiTParams(Params):
    distillation_type: Literal["hard", "soft"] = Field(
        "hard",
        description="'hard': CE of the distillation head against the teacher's argmax (DeiT's best); 'soft': "
        "tau^2-scaled KL to the teacher at temperature tau.",
    )
    alpha: float = Field(
        0.5, ge=0.0, le=1.0, description="Share of the distillation term: (1 - alpha) * CE + alpha * distill (DeiT: 0.5)."
    )
    tau: float = Field(
        1.0, gt=0.0, description="'soft' only: temperature (deit main.py default 1; the paper's soft runs: 3 with alpha 0.1)."
    )
    label_smoothing: float = Field(
        0.1, ge=0.0, le=1.0, description="Label smoothing of the class head's CE (deit main.py --smoothing 0.1)."
    )
    class_head: str = Field("head", min_length=1, description="Student module path of the class-token head (timm: head).")
    dist_head: str = Field(
        "head_dist", min_length=1, description="Student module path of the distillation-token head (timm: head_dist)."
    )

    examples = ({"distillation_type": "soft", "tau": 3.0, "alpha": 0.1},)


class DISTPlusParams(Params):
    beta: float = Field(1.0, ge=0.0, description="Logit level: weight of the inter-class relation (as DIST).")
    gamma: float = Field(1.0, ge=0.0, description="Logit level: weight of the intra-class relation (as DIST).")
    tau: float = Field(
        4.0, gt=0.0, description="Logit level: softmax temperature, tau^2-scaled (DIST's CIFAR-100 config: 4)."
    )
    feature_weight: float = Field(
        1.0,
        ge=0.0,
        description="Weight of the feature-level DIST term on the last feature maps (kdzoo's construction, "
        "not verified against the DIST+ paper); 0: plain DIST, nothing tapped.",
    )
    feature_beta: float = Field(1.0, ge=0.0, description="Feature level: weight of the per-position relation over channels.")
    feature_gamma: float = Field(1.0, ge=0.0, description="Feature level: weight of the per-channel relation over positions.")
    feature_tau: float = Field(
        1.0,
        gt=0.0,
        description="Feature level: temperature of the softmax over channels, tau^2-scaled (the authors' DIST on "
        "(B, C, H, W) maps uses none, i.e. 1).",
    )
    student_layer: str | None = Field(
        None, min_length=1, description="Student module to tap; unset: its cam feature map, else its last stage."
    )
    teacher_layer: str | None = Field(
        None, min_length=1, description="Teacher module to tap; unset: its cam feature map, else its last stage."
    )

    examples = ({"feature_weight": 0.0}, {"feature_tau": 4.0, "feature_gamma": 0.0})


class LumiNetParams(Params):
    temperature: float = Field(
        4.0, gt=0.0, description="Softmax temperature T of the perception logits (authors' ResNet-32x4 -> 8x4: 4)."
    )
    alpha: float = Field(
        33.0,
        gt=0.0,
        description="The KL is multiplied by alpha^2, not T^2 (the authors' SOLVER.ALPHA; ResNet-32x4 -> 8x4: 33).",
    )
    warmup_epochs: int = Field(
        20, ge=0, description="Linear warm-up: the loss is multiplied by min(epoch/warmup, 1), epochs from 1; 0 disables."
    )


class LogitMSEParams(Params):
    reduction: Literal["elements", "classes"] = Field(
        "elements",
        description="'elements': the mean over batch x classes, as the authors' mse_logit (nn.MSELoss()); "
        "'classes': the paper's ||z_s - z_t||_2^2, summed over the classes and averaged over the batch "
        "(the number of classes times 'elements').",
    )
