"""Params models of the logit-zoo losses (torch-free: the hook module imports them).

Defaults are each method's published CIFAR-100 setting, as the reference code named in
the loss's docstring gives it; the loss weight itself is the spec's ``weight``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

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


class MLKDParams(Params):
    temperatures: list[float] = Field(
        default_factory=lambda: [2.0, 3.0, 4.0, 5.0, 6.0],
        min_length=1,
        description="Prediction augmentation: every level is computed at each of these temperatures and summed "
        "(authors: 4 from the config plus 3, 5, 2, 6).",
    )

    @field_validator("temperatures")
    @classmethod
    def _positive(cls, temperatures: list[float]) -> list[float]:
        if any(t <= 0 for t in temperatures):
            raise ValueError(f"temperatures must be positive, got {temperatures}")
        return temperatures


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
