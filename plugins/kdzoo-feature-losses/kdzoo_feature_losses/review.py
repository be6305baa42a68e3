"""Knowledge review: fuse student stages from deep to shallow and match every teacher stage."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.api import DistillBatch, SetupContext
from kdzoo_feature_losses import ReviewKDParams
from kdzoo_feature_losses._base import LayerPair, TappedLoss
from kdzoo_feature_losses._math import hierarchical_context_loss


class AttentionBasedFusion(nn.Module):
    """ABF: project a student stage to ``mid`` channels, fuse it with the (upsampled) fused
    result of the deeper stage through two sigmoid attention maps, and map the fusion
    to the teacher stage's channels and size.

    ``forward`` returns ``(output for the teacher stage, fused features for the next,
    shallower stage)``.
    """

    def __init__(self, student_channels: int, mid_channels: int, teacher_channels: int, output_size: tuple[int, int], fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(student_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        self.output = nn.Sequential(
            nn.Conv2d(mid_channels, teacher_channels, 3, padding=1, bias=False), nn.BatchNorm2d(teacher_channels)
        )
        self.output_size = output_size

    def forward(self, student: Tensor, deeper: Tensor | None = None) -> tuple[Tensor, Tensor]:
        fused = self.reduce(student)
        if self.attention is not None:
            if deeper is None:
                raise ValueError("a fusing ABF needs the deeper stage's fused features")
            deeper = F.interpolate(deeper, size=fused.shape[-2:], mode="nearest")
            weights = self.attention(torch.cat([fused, deeper], dim=1))
            fused = fused * weights[:, 0:1] + deeper * weights[:, 1:2]
        if tuple(fused.shape[-2:]) != self.output_size:
            fused = F.interpolate(fused, size=self.output_size, mode="nearest")
        return self.output(fused), fused


class ReviewKDLoss(TappedLoss):
    """Knowledge review with attention-based fusion and the hierarchical context loss.

    Chen, Liu, Zhao & Jia (2021), "Distilling Knowledge via Knowledge Review", CVPR 2021,
    arXiv:2104.09044.

    Student stages are processed from deep to shallow; each ABF fuses its stage with the
    fused result of the deeper one (the deepest is not fused), so the output compared
    with teacher stage ``i`` "reviews" student stages ``i..n``. Each output is matched to
    its teacher stage with HCL: MSE at full resolution plus MSEs of 4x4, 2x2, 1x1 average
    pools (weights 1, 1/2, 1/4, 1/8, normalised by their sum; pools not smaller than the
    map are skipped). Level losses are summed, as in the paper.

    Follows mdistiller ``mdistiller/distillers/ReviewKD.py`` (from the authors' code,
    dvlab-research/ReviewKD): HCL as its ``hcl_loss`` and the loss multiplied by the
    warm-up factor ``min(epoch / warmup_epochs, 1)`` with epochs counted from 1 (20
    epochs), i.e. ``(batch.epoch + 1) / warmup_epochs`` here. Published weight: 1.0
    (mdistiller ``REVIEWKD.REVIEWKD_WEIGHT``; its resnet32x4 -> resnet8x4 config uses 5.0).

    Differences from the reference, left for later: the original also reviews the pooled
    embedding as an extra "stage" (here only the tapped stage maps take part, all
    declared stages by default); mdistiller's fusion width is ``min(512, deepest student
    channels)`` (here ``mid_channels``, 64); and it matches the teacher's pre-ReLU stage
    outputs (here whatever is tapped).
    """

    loss_name = "reviewkd"
    params_model = ReviewKDParams
    default_taps = "all_stages"
    feature_kind = "map"

    def build(self, pairs: list[LayerPair], context: SetupContext, teacher_index: int) -> nn.Module:
        deepest = len(pairs) - 1
        return nn.ModuleList(
            AttentionBasedFusion(
                pair.student_shape[1],
                self.params.mid_channels,
                pair.teacher_shape[1],
                tuple(pair.teacher_shape[-2:]),
                fuse=level != deepest,
            )
            for level, pair in enumerate(pairs)
        )

    def review(self, student: list[Tensor], fusions: nn.Module) -> list[Tensor]:
        """The ABF outputs for every level, shallow to deep."""
        outputs: list[Tensor] = []
        deeper = None
        for level in reversed(range(len(student))):
            output, deeper = fusions[level](student[level], deeper)
            outputs.insert(0, output)
        return outputs

    def compare(self, student: list[Tensor], teacher: list[Tensor], fusions: nn.Module, batch: DistillBatch) -> Tensor:
        reviewed = self.review(student, fusions)
        pool_sizes = list(self.params.pool_sizes)
        loss = torch.stack([hierarchical_context_loss(s.float(), t, pool_sizes) for s, t in zip(reviewed, teacher)]).sum()
        return self.warmup_factor(batch) * loss

    def warmup_factor(self, batch: DistillBatch) -> float:
        """``min(epoch / warmup_epochs, 1)`` with the reference's epochs counted from 1 (1 when disabled)."""
        warmup = self.params.warmup_epochs
        return 1.0 if warmup == 0 else min((batch.epoch + 1) / warmup, 1.0)
