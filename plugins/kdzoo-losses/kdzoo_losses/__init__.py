"""kdzoo built-in plugin: losses (hook module; must stay cheap to import: no torch here).

Label and logit-based training objectives. Each component computes only its own
term; the spec combines them as a weighted sum (e.g. ``ce: 0.4`` + ``kd: 0.6``), so no
loss here mixes in cross-entropy itself, except ``deit`` (``kdzoo_losses.deit``), whose
objective holds its class-head CE and is used alone, and the two-view methods ``crld``
(``kdzoo_losses.crld``) and ``mlkd`` with ``strong_view``, which add the CE of the strong
view only they see (the spec's ``ce`` term stays the weak view's). The implementations live in
``kdzoo_losses.label`` (label-only), ``kdzoo_losses.logit`` (teacher logits),
``kdzoo_losses.ctkd`` (learnable temperature), ``kdzoo_losses.soft_labels`` (WSLD,
NormKD), ``kdzoo_losses.refined`` (RLD), ``kdzoo_losses.multilevel`` (MLKD),
``kdzoo_losses.selfkd`` (CS-KD), ``kdzoo_losses.cam`` (SDD, CAT-KD: the ``cam`` head) and
``kdzoo_losses.mutual`` (DML: the peers of a fused pass), ``kdzoo_losses.dist_plus`` (DIST+:
DIST with a feature-level term), ``kdzoo_losses.luminet`` (LumiNet) and
``kdzoo_losses.logit_mse`` (MSE between the logits);
factory strings point there so torch is imported only when a loss is built. The params
models of the later ones are in ``kdzoo_losses.params`` (torch-free too).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from kdzoo import hookimpl
from kdzoo.api import Params
from kdzoo_losses.params import (
    CATKDParams,
    CRLDParams,
    CSKDParams,
    DeiTParams,
    DISTPlusParams,
    DMLParams,
    LogitMSEParams,
    LumiNetParams,
    MLKDParams,
    NormKDParams,
    RLDParams,
    SDDParams,
    WSLDParams,
)

KDZOO_PLUGIN_API = (1, 3)  # Params (1.1); dml reads the peers of a fused pass (1.2); crld, mlkd views and ce is_task_loss (1.3)


class _Params(Params):
    """Base of the params models below: unknown keys refused, defaults validated."""


class CrossEntropyParams(_Params):
    label_smoothing: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of the target mass spread uniformly over all classes (0: plain CE)."
    )


class TemperatureParams(_Params):
    temperature: float = Field(
        4.0, gt=0.0, description="Softmax temperature T of teacher and student; the loss is T^2-scaled."
    )


class DKDParams(_Params):
    alpha: float = Field(1.0, ge=0.0, description="Weight of TCKD (target vs. non-target binary KL).")
    beta: float = Field(8.0, ge=0.0, description="Weight of NCKD (KL among the non-target classes).")
    temperature: float = Field(4.0, gt=0.0, description="Softmax temperature T; both parts are T^2-scaled.")
    warmup_epochs: int = Field(
        20,
        ge=0,
        description="Linear warm-up: the loss is multiplied by min(epoch/warmup, 1), epochs counted from 1; "
        "0 disables.",
    )


class DISTParams(_Params):
    beta: float = Field(1.0, ge=0.0, description="Weight of the inter-class relation (Pearson per sample).")
    gamma: float = Field(
        1.0, ge=0.0, description="Weight of the intra-class relation (Pearson per class over the batch)."
    )
    tau: float = Field(
        4.0, gt=0.0, description="Softmax temperature; the loss is tau^2-scaled (authors' CIFAR-100 config: 4)."
    )


class LogitStandardParams(_Params):
    temperature: float = Field(
        2.0,
        gt=0.0,
        description="Base temperature applied to the z-scored logits; the loss is T^2-scaled (authors' code).",
    )


class TTMParams(_Params):
    gamma: float = Field(
        0.2,
        gt=0.0,
        description="Power exponent of the teacher transform p_t^gamma (gamma = 1/T; the authors' CIFAR-100 "
        "examples use 0.1-0.2); the student is not tempered.",
    )


class NKDParams(_Params):
    temperature: float = Field(
        3.0,
        gt=0.0,
        description="Temperature of the normalised non-target distributions (authors' CIFAR-100 config: 3; "
        "ImageNet: 1).",
    )
    gamma: float = Field(
        3.5, ge=0.0, description="Weight of the non-target term, T^2-scaled (authors' CIFAR-100 config: 3.5; ImageNet: 1.5)."
    )


class CTKDParams(_Params):
    min_temperature: float = Field(1.0, gt=0.0, description="Lower end of the learnable temperature's range.")
    max_temperature: float = Field(21.0, gt=0.0, description="Upper end of the learnable temperature's range.")
    init_logit: float = Field(
        1.0,
        description="Initial value of the learnable parameter; temperature = min + (max - min) * sigmoid(it), "
        "so the authors' 1.0 starts at about 15.6.",
    )
    lambda_min: float = Field(0.0, ge=0.0, description="Gradient-reversal strength at the start of the curriculum.")
    lambda_max: float = Field(1.0, ge=0.0, description="Gradient-reversal strength at the end of the curriculum.")
    curriculum_epochs: int = Field(
        10, ge=1, description="Epochs over which lambda rises from lambda_min to lambda_max along a cosine."
    )

    @model_validator(mode="after")
    def _range_is_ordered(self) -> "CTKDParams":
        if self.max_temperature <= self.min_temperature:
            raise ValueError("max_temperature must be greater than min_temperature")
        return self


class TeacherFreeParams(_Params):
    correct_prob: float = Field(
        0.99,
        gt=0.0,
        lt=1.0,
        description="Probability a of the correct class in the hand-designed distribution (authors' code: 0.99).",
    )
    temperature: float = Field(
        20.0,
        gt=0.0,
        description="Temperature softening the designed distribution ('paper': also the student's, T^2-scaled).",
    )
    convention: Literal["reference", "paper"] = Field(
        "reference",
        description="'reference': the authors' loss_kd_regularization (KL(softmax(p^d/T) || softmax(s)), "
        "mean over batch x classes), so their reg_alpha * multiplier is the weight; 'paper': "
        "T^2 * KL(softmax(log(p^d)/T) || softmax(s/T)), batch mean.",
    )


class EnsembleKDParams(_Params):
    temperature: float = Field(4.0, gt=0.0, description="Softmax temperature T; the loss is T^2-scaled.")


# name -> (factory, params model, one-line description)
_LOSSES: dict[str, tuple[str, type[BaseModel], str]] = {
    "ce": (
        "kdzoo_losses.label:CrossEntropy",
        CrossEntropyParams,
        "Cross-entropy with the labels (optional label smoothing).",
    ),
    "tfkd": (
        "kdzoo_losses.label:TeacherFreeKD",
        TeacherFreeParams,
        "Teacher-free KD regulariser (Yuan et al. 2020): KL to a hand-designed label distribution.",
    ),
    "kd": (
        "kdzoo_losses.logit:KD",
        TemperatureParams,
        "Hinton KD: T^2 * KL(teacher/T || student/T), mean over teachers.",
    ),
    "kd-ensemble": (
        "kdzoo_losses.logit:EnsembleKD",
        EnsembleKDParams,
        "KD against the mean of the teachers' logits (one KL to the ensemble).",
    ),
    "dkd": (
        "kdzoo_losses.logit:DKD",
        DKDParams,
        "Decoupled KD (Zhao et al. 2022): alpha*TCKD + beta*NCKD with warm-up.",
    ),
    "dist": (
        "kdzoo_losses.logit:DIST",
        DISTParams,
        "DIST (Huang et al. 2022): inter- and intra-class Pearson relations.",
    ),
    "dist-plus": (
        "kdzoo_losses.dist_plus:DISTPlus",
        DISTPlusParams,
        "DIST+ (Huang et al. 2025): DIST plus a DIST term on the last feature maps (no teacher acclimation).",
    ),
    "kd-logit-std": (
        "kdzoo_losses.logit:LogitStandardKD",
        LogitStandardParams,
        "KD on z-score standardised logits (Sun et al. 2024, LSKD).",
    ),
    "ttm": (
        "kdzoo_losses.logit:TTM",
        TTMParams,
        "Transformed teacher matching (Zheng & Yang 2024): no student temperature.",
    ),
    "wttm": (
        "kdzoo_losses.logit:WTTM",
        TTMParams,
        "Weighted TTM (Zheng & Yang 2024): TTM weighted per sample by the teacher's power sum.",
    ),
    "nkd": (
        "kdzoo_losses.logit:NKD",
        NKDParams,
        "Normalized KD (Yang et al. 2023): target term + normalised non-target term.",
    ),
    "logit-mse": (
        "kdzoo_losses.logit_mse:LogitMSE",
        LogitMSEParams,
        "Logit matching (Kim et al. 2021): MSE between student and teacher logits, mean over teachers.",
    ),
    "luminet": (
        "kdzoo_losses.luminet:LumiNet",
        LumiNetParams,
        "LumiNet (Hossain et al. 2023): alpha^2-scaled KD on batch-standardised (perception) logits.",
    ),
    "ctkd": (
        "kdzoo_losses.ctkd:CTKD",
        CTKDParams,
        "Curriculum temperature KD (Li et al. 2023): learnable temperature trained through gradient reversal.",
    ),
    "wsld": (
        "kdzoo_losses.soft_labels:WSLD",
        WSLDParams,
        "Weighted soft labels (Zhou et al. 2021): KD weighted per sample by the student/teacher CE ratio.",
    ),
    "normkd": (
        "kdzoo_losses.soft_labels:NormKD",
        NormKDParams,
        "Normalized KD (Chi et al. 2023): per-sample temperature T_norm * std of the logits.",
    ),
    "rld": (
        "kdzoo_losses.refined:RLD",
        RLDParams,
        "Refined logit distillation (Sun et al. 2025): sample confidence + masked class correlation.",
    ),
    "mlkd": (
        "kdzoo_losses.multilevel:MLKD",
        MLKDParams,
        "Multi-level logit distillation (Jin et al. 2023): instance, batch and class alignment; one view, "
        "or weak + strong views (strong_view).",
    ),
    "crld": (
        "kdzoo_losses.crld:CRLD",
        CRLDParams,
        "Cross-view consistency KD (Zhang et al. 2024): within- and cross-view KD on a weak and a strong view.",
    ),
    "cskd": (
        "kdzoo_losses.selfkd:ClassWiseSelfKD",
        CSKDParams,
        "Class-wise self-KD (Yun et al. 2020): KL to the model's own prediction on a same-class sample.",
    ),
    "sdd": (
        "kdzoo_losses.cam:SDD",
        SDDParams,
        "Scale-decoupled distillation (Wei et al. 2024): KD/DKD on multi-scale pooled region logits (cam head).",
    ),
    "catkd": (
        "kdzoo_losses.cam:CATKD",
        CATKDParams,
        "Class attention transfer KD (Guo et al. 2023): MSE of pooled class activation maps (cam head).",
    ),
    "dml": (
        "kdzoo_losses.mutual:DeepMutualLearningLoss",
        DMLParams,
        "Deep mutual learning (Zhang et al. 2018): students of a fused pass learn from each other's predictions.",
    ),
    "deit": (
        "kdzoo_losses.deit:DeiTDistillation",
        DeiTParams,
        "DeiT (Touvron et al. 2021): CE on the class head + hard/soft KD on the distillation-token head (used alone).",
    ),
}


@hookimpl
def register_losses(register):
    for name, (factory, params, description) in _LOSSES.items():
        register(name, factory, params=params, description=description)
