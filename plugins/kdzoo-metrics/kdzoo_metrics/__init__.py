"""kdzoo built-in plugin: metrics (hook module; must stay cheap to import: no torch here).

The figures of the study kdzoo reproduces (see ``shared/STUDY.md``): accuracy,
fidelity, KL, mutual information, entropy, calibration and attention IoU. Key naming
and the compared pairs are defined once in the public API (:mod:`kdzoo.api.keys`, :func:`kdzoo.api.role_pairs`).
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from kdzoo import hookimpl

KDZOO_PLUGIN_API = (1, 0)


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AccuracyParams(_Params):
    topk: list[PositiveInt] = Field(default_factory=lambda: [1, 5], min_length=1)


class KLParams(_Params):
    temperature: float = Field(1.0, gt=0)


class MutualInformationParams(_Params):
    per_batch_size: PositiveInt = 128  # the authors' batch size, for the per-batch MI


class CalibrationParams(_Params):
    bins: list[PositiveInt] = Field(default_factory=lambda: [10, 15], min_length=1)


class AttentionIoUParams(_Params):
    method: Literal["auto", "cam", "cam-predicted", "gradcam", "rollout", "cls-attention"] = "auto"
    threshold: float = Field(0.4, ge=0, lt=1)
    gradcam_layer: str | None = None  # module path in the body; default: the CamHead features
    per_batch_size: PositiveInt = 128  # runs of images pooled for the authors' per-batch IoU
    # The first N images of a split and every model's normalised map, kept in the summary
    # for attention-overlay plots (kdzoo report); 0 turns them off.
    overlay_images: int = Field(8, ge=0, le=64)


class NoParams(_Params):
    pass


@hookimpl
def register_metrics(register):
    register(
        "accuracy",
        "kdzoo_metrics.classification:Accuracy",
        params=AccuracyParams,
        description="top-k accuracy of every model and of the teachers' ensemble",
    )
    register(
        "fidelity",
        "kdzoo_metrics.classification:Fidelity",
        params=NoParams,
        description="top-1 agreement between student, teachers and ensemble",
    )
    register(
        "kl",
        "kdzoo_metrics.classification:KLDivergence",
        params=KLParams,
        description="mean KL(teacher ‖ student) between predictive distributions (teacher side the reference)",
    )
    register(
        "mutual-information",
        "kdzoo_metrics.mutual_information:MutualInformation",
        params=MutualInformationParams,
        description="MI / NMI between predicted labels (whole-set and the authors' per-batch figure)",
    )
    register(
        "entropy",
        "kdzoo_metrics.classification:PredictiveEntropy",
        params=NoParams,
        description="mean predictive entropy (nats) of every model",
    )
    register(
        "calibration",
        "kdzoo_metrics.calibration:Calibration",
        params=CalibrationParams,
        description="ECE weighted by bin counts (and the authors' unweighted bin mean) and reliability-diagram bins",
    )
    register(
        "attention-iou",
        "kdzoo_metrics.attention_iou:AttentionIoU",
        params=AttentionIoUParams,
        description="IoU of thresholded CAM / Grad-CAM / rollout maps between models and with object masks",
    )
