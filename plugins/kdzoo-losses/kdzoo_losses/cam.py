"""Losses on the class activations of the last feature map (the networks' ``cam`` head):
scale-decoupled distillation (SDD) and class attention transfer (CAT-KD).

Both read the last feature map through a tap and apply the network's own linear
classifier to pooled regions of it. The classifiers are looked up in ``setup`` and held
as plain references, not submodules: the student's head is already a parameter of the
student (this loss's gradient reaches it there), and a teacher's is a frozen constant that
must never become a parameter of the loss. The heads' products run in fp32, autocast or
not (as the losses on logits do).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.api import DistillBatch, Loss, ModelOutputs, Network, SetupContext
from kdzoo_losses._math import full_precision, kl_per_sample, non_target_logits, target_vs_rest_log_probs


def _cam_head(network: Network, role: str, loss_name: str):
    if network.cam is None:
        raise ValueError(
            f"{loss_name} needs the {role} network's cam head (last feature map and linear classifier); it declares none"
        )
    return network.cam


def _classifier(network: Network, role: str, loss_name: str) -> nn.Linear:
    head = network.submodule(_cam_head(network, role, loss_name).classifier)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"{loss_name}: the {role} network's cam classifier is a {type(head).__name__}, not an nn.Linear")
    return head


class _CamLoss(Loss):
    """Taps the last feature map of both networks and keeps their classifiers from ``setup``."""

    loss_name = "cam loss"

    def __init__(self, params=None):
        super().__init__(params)
        # Plain lists: nn.Module would register the heads as this loss's parameters.
        self._student_head: list[nn.Linear] = []
        self._teacher_heads: list[nn.Linear] = []

    def taps(self, student: Network, teacher: Network | None) -> tuple[list[str], list[str]]:
        student_path = _cam_head(student, "student", self.loss_name).features
        if teacher is None:
            return [student_path], []
        return [student_path], [_cam_head(teacher, "teacher", self.loss_name).features]

    def setup(self, context: SetupContext) -> None:
        self._student_path = _cam_head(context.student, "student", self.loss_name).features
        self._teacher_paths = [_cam_head(t, "teacher", self.loss_name).features for t in context.teachers]
        self._student_head = [_classifier(context.student, "student", self.loss_name)]
        self._teacher_heads = [_classifier(t, "teacher", self.loss_name) for t in context.teachers]

    def feature_maps(self, student: ModelOutputs, teacher: ModelOutputs, index: int) -> tuple[Tensor, Tensor]:
        if not self._student_head or index >= len(self._teacher_heads):
            raise RuntimeError(f"{self.loss_name}: setup() must run before the loss (it looks up the classifiers)")
        student_map = student.features[self._student_path].float()
        teacher_map = teacher.features[self._teacher_paths[index]].detach().float()
        return student_map, teacher_map

    def heads(self, index: int) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        """(student weight, student bias, teacher weight, teacher bias) in fp32; the teacher's detached."""
        student_head, teacher_head = self._student_head[0], self._teacher_heads[index]
        student_bias = None if student_head.bias is None else student_head.bias.float()
        teacher_bias = None if teacher_head.bias is None else teacher_head.bias.detach().float()
        return student_head.weight.float(), student_bias, teacher_head.weight.detach().float(), teacher_bias


def _regions(feature_map: Tensor, scales: list[int]) -> Tensor:
    """``(N * B, C)`` region features: each s x s average-pooled grid, region-major (all samples
    of region 0, then region 1, ...), the grids in the order of ``scales``."""
    channels = feature_map.shape[1]
    grids = [F.adaptive_avg_pool2d(feature_map, s).flatten(2) for s in scales]  # (B, C, s*s) each
    return torch.cat(grids, dim=2).permute(2, 0, 1).reshape(-1, channels)


class SDD(_CamLoss):
    """Scale-decoupled distillation: the base logit loss on every pooled region's logits.

    Wei, Luo, Luo, 2024, "Scale Decoupled Distillation" (CVPR 2024, arXiv 2403.13512).
    The last feature map is average-pooled to 1 x 1, 2 x 2, 4 x 4 grids (``scales``,
    the authors' ``M``); each region is classified by the network's own linear head,
    giving ``N = sum s^2`` logit vectors per sample (region 1 x 1 is the ordinary
    logits). The base loss (KD, or DKD with its TCKD/NCKD split) is computed for every
    region and sample, weighted 1 where the teacher's prediction on the region is as
    right or wrong as on the whole image (consistent) and ``complementary_weight`` (2)
    where it differs, and averaged over all ``N * B`` of them.

    Follows the authors' ``sdd_kd_loss`` and ``multi_dkd`` (shicaiwei123/SDD-CVPR2024
    ``mdistiller/distillers/KD.py``, ``SDD_DKD.py``) with the SPP of
    ``mdistiller/models/cifar/utils.py``: their SPP pools the 2 x 2 grid from the 4 x 4
    one, which equals pooling the map directly when its side divides by 4 (8 x 8 here).
    The student's head receives the regions' gradient, as in their models. SD-KD has no
    warm-up; SD-DKD multiplies by ``min(epoch / 20, 1)``. Published weight: SD-KD 0.9
    with CE at 0.1 (their KD config), SD-DKD 1 with CE at 1; T = 4.
    """

    loss_name = "sdd"

    def pair(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: DistillBatch, teacher_index: int) -> Tensor:
        p = self.params
        student_map, teacher_map = self.feature_maps(student, teacher, teacher_index)
        student_weight, student_bias, teacher_weight, teacher_bias = self.heads(teacher_index)
        with full_precision(student_map):
            s = F.linear(_regions(student_map, p.scales), student_weight, student_bias) / p.temperature
            with torch.no_grad():
                t_raw = F.linear(_regions(teacher_map, p.scales), teacher_weight, teacher_bias)
        t = t_raw / p.temperature
        batch_size = batch.targets.shape[0]
        regions = s.shape[0] // batch_size
        y = batch.targets.repeat(regions)
        if p.base == "kd":
            per_row = kl_per_sample(F.log_softmax(t, dim=1), F.log_softmax(s, dim=1))
        else:
            tckd = kl_per_sample(target_vs_rest_log_probs(t, y), target_vs_rest_log_probs(s, y))
            nckd = kl_per_sample(
                F.log_softmax(non_target_logits(t, y), dim=1), F.log_softmax(non_target_logits(s, y), dim=1)
            )
            per_row = p.alpha * tckd + p.beta * nckd
        with torch.no_grad():
            region_right = t_raw.argmax(dim=1) == y
            global_right = region_right[:batch_size].repeat(regions)
            weight = torch.where(region_right == global_right, 1.0, p.complementary_weight)
        warmup = 1.0 if p.warmup_epochs == 0 else min((batch.epoch + 1) / p.warmup_epochs, 1.0)
        return warmup * p.temperature**2 * (weight * per_row).mean()


class CATKD(_CamLoss):
    """Class attention transfer: match the teacher's pooled class activation maps.

    Guo, Yan, Li, Lin, 2023, "Class Attention Transfer Based Knowledge Distillation"
    (CVPR 2023, arXiv 2304.12777). The CAM of class k is ``sum_c W[k, c] * F[c]`` over
    the last feature map F and the linear head W (no bias); both networks' CAMs are
    average-pooled to ``resolution x resolution`` (2), optionally L2-normalised per map,
    and compared by MSE (mean over samples, classes and cells).

    Follows the authors' ``CAT_KD`` and ``CAT_loss`` (GzyAftermath/CAT-KD
    ``mdistiller/distillers/CAT_KD.py``). They convert both networks' heads to a 1 x 1
    convolution without bias (``conv_test``, the teacher's initialised from its ``fc``
    weight), so the student's logits are the pooled CAMs; kdzoo's student keeps its
    linear head and bias, and its CAM uses the head's weight. Pooling and the head are
    both linear, so the feature map is pooled before the head (the same numbers, cheaper).
    Published weight: beta = 15 for ResNet-32x4 -> ResNet-8x4 (``configs/cifar100/CAT_KD/
    res32x4_res8x4.yaml``: ``CAT_loss_weight: 15.``, ``CAM_RESOLUTION: 2``,
    ``IF_NORMALIZE: False``), with CE at 1 (``mdistiller/engine/cfg.py``'s default: 400).
    """

    loss_name = "catkd"

    def pair(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: DistillBatch, teacher_index: int) -> Tensor:
        p = self.params
        student_map, teacher_map = self.feature_maps(student, teacher, teacher_index)
        student_weight, _, teacher_weight, _ = self.heads(teacher_index)
        with full_precision(student_map):
            student_cams = torch.einsum("kc,bcij->bkij", student_weight, F.adaptive_avg_pool2d(student_map, p.resolution))
            with torch.no_grad():
                teacher_cams = torch.einsum("kc,bcij->bkij", teacher_weight, F.adaptive_avg_pool2d(teacher_map, p.resolution))
        if p.normalize:
            student_cams = F.normalize(student_cams, dim=(2, 3))
            teacher_cams = F.normalize(teacher_cams, dim=(2, 3))
        return F.mse_loss(student_cams, teacher_cams)
