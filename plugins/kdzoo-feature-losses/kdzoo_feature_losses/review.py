"""Knowledge review: fuse student levels from deep to shallow and match every teacher level."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.api import DistillBatch, Network, SetupContext
from kdzoo.api.connectors import as_embedding, as_feature_map, embedding_shape
from kdzoo_feature_losses import ReviewKDParams
from kdzoo_feature_losses._base import LayerPair, TappedLoss, map_shape
from kdzoo_feature_losses._math import hierarchical_context_loss

#: the reference's fusion width is min(MAX_MID_CHANNEL, deepest student channels)
MAX_MID_CHANNELS = 512


class AttentionBasedFusion(nn.Module):
    """ABF: project a student level to ``mid`` channels, fuse it with the (upsampled) fused
    result of the deeper level through two sigmoid attention maps, and map the fusion
    to the teacher level's channels and size.

    ``forward`` returns ``(output for the teacher level, fused features for the next,
    shallower level)``.
    """

    def __init__(self, student_channels: int, mid_channels: int, teacher_channels: int, output_size: tuple[int, int], fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(student_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        self.output = nn.Sequential(
            nn.Conv2d(mid_channels, teacher_channels, 3, padding=1, bias=False), nn.BatchNorm2d(teacher_channels)
        )
        # The reference's initialisation of the two convs (the attention conv keeps PyTorch's).
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.output[0].weight, a=1)
        self.output_size = output_size

    def forward(self, student: Tensor, deeper: Tensor | None = None) -> tuple[Tensor, Tensor]:
        fused = self.reduce(student)
        if self.attention is not None:
            if deeper is None:
                raise ValueError("a fusing ABF needs the deeper level's fused features")
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

    Follows mdistiller ``mdistiller/distillers/ReviewKD.py`` (the authors' CIFAR-100 code,
    dvlab-research/ReviewKD ``CIFAR-100/model/reviewkd.py``, has the same ABF and HCL).
    The levels are the stage maps (all declared stages by default) plus, with ``levels:
    stages_and_embedding`` (the default), the network's pooled embedding as a 1x1 map, the
    deepest level (the reference's ``pooled_feat.unsqueeze(-1).unsqueeze(-1)``, its
    ``shapes`` / ``out_shapes`` starting at 1). Levels are processed from deep to shallow;
    each ABF fuses its level with the fused result of the deeper one (nearest upsampling;
    the deepest is not fused), so the output compared with teacher level ``i`` "reviews"
    student levels ``i..n``. The fusion width is ``min(512, channels of the deepest student
    level)`` unless ``mid_channels`` is set (256 for resnet8x4's embedding). Each output is
    matched to its teacher level with HCL (``hcl_loss``): MSE at full resolution plus MSEs
    of 4x4, 2x2, 1x1 average pools with weights 1/2, 1/4, 1/8, normalised by the total
    weight (1 + the used pool weights); pools not smaller than the map are skipped, so the
    1x1 pooled level is a plain MSE. Level losses are summed, then multiplied by the
    warm-up factor ``min(epoch / warmup_epochs, 1)`` with epochs counted from 1 (20
    epochs), i.e. ``(batch.epoch + 1) / warmup_epochs`` here.

    Published weight: 5.0 for resnet32x4 -> resnet8x4 (mdistiller
    ``configs/cifar100/reviewkd.yaml`` ``REVIEWKD_WEIGHT``; its default config says 1.0).
    The authors' ``CIFAR-100/script/reviewKD.sh`` uses 5.0 for most pairs, 8.0 for
    ShuffleV2, 0.6 for resnet56 -> resnet20, 1.0 for resnet110 -> resnet32.

    Taps as the reference: the teacher's stage levels are its pre-ReLU stage outputs
    (``preact_feats``: the network's ``pre_activation_stages`` where it declares them),
    the student's its post-ReLU stages (``feats``).
    """

    loss_name = "reviewkd"
    params_model = ReviewKDParams
    default_taps = "all_stages"
    # Stage maps and the pooled embedding are converted per level here, not by TappedLoss.
    feature_kind = "any"

    # ------------------------------------------------------------------ taps
    def _declared_layers(self, net: Network, role: str) -> list[str]:
        if role == "teacher" and net.pre_activation_stages:  # mdistiller: the teacher's preact_feats
            return list(net.pre_activation_stages)
        return super()._declared_layers(net, role)

    def _embedding_tap(self, net: Network, role: str) -> str:
        if not net.embedding:
            raise ValueError(
                f"{self.loss_name}: the {role} network declares no embedding tap for the pooled level; "
                "set levels: stages"
            )
        self._check_paths(net, [net.embedding], role)
        return net.embedding

    def taps(self, student: Network, teacher: Network | None) -> tuple[list[str], list[str]]:
        """The stage taps (``student_layers`` / ``teacher_layers`` or the declared stages),
        then each network's embedding as the deepest level unless ``levels`` is ``stages``."""
        student_layers, teacher_layers = super().taps(student, teacher)
        if self.params.levels == "stages":
            return student_layers, teacher_layers
        student_layers = [*student_layers, self._embedding_tap(student, "student")]
        if teacher is not None:
            teacher_layers = [*teacher_layers, self._embedding_tap(teacher, "teacher")]
        return student_layers, teacher_layers

    # ------------------------------------------------------------------ levels
    def is_pooled_level(self, level: int, count: int) -> bool:
        """Whether level ``level`` of ``count`` (shallow to deep) is the pooled embedding."""
        return self.params.levels == "stages_and_embedding" and level == count - 1

    def level_shape(self, shape: torch.Size, path: str, role: str, pooled: bool) -> torch.Size:
        """The ``(B, C, H, W)`` shape a tapped feature takes part with (1x1 for the pooled level)."""
        if pooled:
            batch, channels = embedding_shape(shape)
            return torch.Size((batch, channels, 1, 1))
        return map_shape(self.loss_name, shape, path, role)

    @staticmethod
    def as_level(x: Tensor, pooled: bool) -> Tensor:
        """A tapped feature as a map: the pooled embedding as ``(B, D, 1, 1)``."""
        return as_embedding(x)[:, :, None, None] if pooled else as_feature_map(x)

    # ------------------------------------------------------------------ setup / forward
    def build(self, pairs: list[LayerPair], context: SetupContext, teacher_index: int) -> nn.Module:
        count = len(pairs)
        shapes = []
        for level, pair in enumerate(pairs):
            pooled = self.is_pooled_level(level, count)
            shapes.append(
                (
                    self.level_shape(pair.student_shape, pair.student_path, "student", pooled),
                    self.level_shape(pair.teacher_shape, pair.teacher_path, f"teacher {teacher_index}", pooled),
                )
            )
        mid_channels = self.params.mid_channels or min(MAX_MID_CHANNELS, shapes[-1][0][1])
        return nn.ModuleList(
            AttentionBasedFusion(
                student_shape[1], mid_channels, teacher_shape[1], tuple(teacher_shape[-2:]), fuse=level != count - 1
            )
            for level, (student_shape, teacher_shape) in enumerate(shapes)
        )

    def review(self, student: list[Tensor], fusions: nn.Module) -> list[Tensor]:
        """The ABF outputs for every level, shallow to deep (levels already maps)."""
        outputs: list[Tensor] = []
        deeper = None
        for level in reversed(range(len(student))):
            output, deeper = fusions[level](student[level], deeper)
            outputs.insert(0, output)
        return outputs

    def compare(self, student: list[Tensor], teacher: list[Tensor], fusions: nn.Module, batch: DistillBatch) -> Tensor:
        count = len(student)
        student = [self.as_level(x, self.is_pooled_level(level, count)) for level, x in enumerate(student)]
        teacher = [self.as_level(x, self.is_pooled_level(level, count)) for level, x in enumerate(teacher)]
        reviewed = self.review(student, fusions)
        pool_sizes = list(self.params.pool_sizes)
        loss = torch.stack([hierarchical_context_loss(s, t, pool_sizes) for s, t in zip(reviewed, teacher)]).sum()
        return self.warmup_factor(batch) * loss

    def warmup_factor(self, batch: DistillBatch) -> float:
        """``min(epoch / warmup_epochs, 1)`` with the reference's epochs counted from 1 (1 when disabled)."""
        warmup = self.params.warmup_epochs
        return 1.0 if warmup == 0 else min((batch.epoch + 1) / warmup, 1.0)
