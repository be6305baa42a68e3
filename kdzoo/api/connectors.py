"""Connectors: small trainable adapters that map a student feature onto a teacher feature's shape.

Feature-distillation losses compare tensors of different widths (and often different
spatial sizes or layouts: CNN maps vs. transformer tokens). Any plugin, built-in or
third-party, builds its adapters here from the tapped shapes it receives in
``Loss.setup`` (batch dimension included), so every loss resizes and projects the
same way. A connector is an ``nn.Module`` owned by the loss: the core trains it with
the student, saves it in the checkpoint and reports ``count_parameters`` of it.

Imports torch: use it from loss implementation modules, not from plugin hook modules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Connector kinds accepted by :func:`make_connector`.
CONNECTOR_KINDS = ("auto", "identity", "conv1x1", "conv3x3", "linear", "mlp")

Shape = Sequence[int]


def _fmt(shape: Shape) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def _token_grid_side(num_tokens: int) -> tuple[int, int] | None:
    """(side, leading tokens to drop) when ``num_tokens`` (or it minus a CLS token) is a square."""
    side = math.isqrt(num_tokens)
    if side * side == num_tokens:
        return side, 0
    side = math.isqrt(num_tokens - 1)
    if num_tokens > 1 and side * side == num_tokens - 1:
        return side, 1
    return None


def feature_map_shape(shape: Shape) -> torch.Size:
    """The ``(B, C, H, W)`` shape :func:`as_feature_map` turns a tensor of ``shape`` into.

    Raises ValueError for shapes that are neither maps nor square token grids.
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) == 4:
        return torch.Size(shape)
    if len(shape) == 3:
        batch, tokens, dim = shape
        grid = _token_grid_side(tokens)
        if grid is None:
            raise ValueError(
                f"token map {_fmt(shape)} cannot be laid out as a square grid: "
                f"neither N={tokens} nor N-1={tokens - 1} (without a CLS token) is a square"
            )
        side, _ = grid
        return torch.Size((batch, dim, side, side))
    raise ValueError(f"shape {_fmt(shape)} is not a (B, C, H, W) feature map or a (B, N, D) token map")


def as_feature_map(x: Tensor) -> Tensor:
    """A ``(B, C, H, W)`` view of a feature: maps pass through, ``(B, N, D)`` tokens become a grid.

    Tokens are laid out row-major on an ``h x w`` grid (the ViT patch order) when N is a
    square; when N-1 is, the first token (CLS) is dropped first.
    """
    if x.ndim == 4:
        return x
    batch, channels, side, _ = feature_map_shape(x.shape)
    drop = x.shape[1] - side * side  # 0, or 1 for a leading CLS token
    return x[:, drop:, :].transpose(1, 2).reshape(batch, channels, side, side)


def embedding_shape(shape: Shape) -> torch.Size:
    """The ``(B, D)`` shape :func:`as_embedding` turns a tensor of ``shape`` into."""
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
        raise ValueError(f"shape {_fmt(shape)} has no feature dimension after the batch dimension")
    if len(shape) == 3:  # (B, N, D) tokens: the class token
        return torch.Size((shape[0], shape[2]))
    return torch.Size((shape[0], math.prod(shape[1:])))


def as_embedding(x: Tensor) -> Tensor:
    """Flatten a pooled feature (``(B, D)``, ``(B, D, 1, 1)``, ...) to ``(B, D)``; a transformer's
    ``(B, N, D)`` token sequence gives its first (class) token, as ViT classifiers use it."""
    return x[:, 0] if x.ndim == 3 else x.flatten(1)


class ConvConnector(nn.Module):
    """``k x k`` conv + BatchNorm from student to teacher channels, then a bilinear resize
    to the teacher's spatial size when ``output_size`` is given and differs."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, output_size: tuple[int, int] | None = None):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.output_size = output_size

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        if self.output_size is not None and tuple(x.shape[-2:]) != self.output_size:
            x = F.interpolate(x, size=self.output_size, mode="bilinear", align_corners=False)
        return x


def _check_conv_shapes(kind: str, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> None:
    if len(student_shape) != 4 or len(teacher_shape) != 4:
        raise ValueError(
            f"connector '{kind}' needs (B, C, H, W) maps, got student {_fmt(student_shape)} and "
            f"teacher {_fmt(teacher_shape)}; convert tokens with kdzoo.api.connectors.as_feature_map first"
        )


def _check_linear_shapes(kind: str, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> None:
    if len(student_shape) not in (2, 3) or len(student_shape) != len(teacher_shape) or student_shape[1:-1] != teacher_shape[1:-1]:
        raise ValueError(
            f"connector '{kind}' maps the last dimension of (B, D) embeddings or (B, N, D) tokens with "
            f"equal N; got student {_fmt(student_shape)} and teacher {_fmt(teacher_shape)}"
        )


def _identity_compatible(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], match_spatial: bool) -> bool:
    if len(student_shape) != len(teacher_shape):
        return False
    if match_spatial:
        return student_shape[1:] == teacher_shape[1:]
    return student_shape[1] == teacher_shape[1]  # only the channel count must agree


def make_connector(
    kind: str,
    student_shape: Shape,
    teacher_shape: Shape,
    *,
    match_spatial: bool = True,
    hidden_dim: int | None = None,
) -> nn.Module:
    """A module mapping a student feature of ``student_shape`` to ``teacher_shape``.

    Shapes include the batch dimension (as in ``SetupContext``). Kinds:

    - ``"identity"``: no parameters; only when the shapes already agree.
    - ``"conv1x1"`` / ``"conv3x3"``: conv + BatchNorm on ``(B, C, H, W)`` maps, then a
      bilinear resize to the teacher's ``(H, W)`` (skipped with ``match_spatial=False``,
      for losses whose comparison does not depend on the spatial size).
    - ``"linear"``: ``nn.Linear`` on the last dim of ``(B, D)`` or ``(B, N, D)`` (equal N).
    - ``"mlp"``: Linear-ReLU-Linear (hidden width ``hidden_dim``, default the teacher's).
    - ``"auto"``: identity when the shapes agree, else conv1x1 for maps, linear otherwise.

    With ``match_spatial=False`` identity needs only equal channel counts (dim 1).
    Raises ValueError (naming both shapes) when the kind cannot map the shapes.
    """
    student_shape = tuple(int(d) for d in student_shape)
    teacher_shape = tuple(int(d) for d in teacher_shape)
    if kind not in CONNECTOR_KINDS:
        raise ValueError(f"unknown connector kind '{kind}'; choose one of {', '.join(CONNECTOR_KINDS)}")
    if kind == "auto":
        if _identity_compatible(student_shape, teacher_shape, match_spatial):
            kind = "identity"
        else:
            kind = "conv1x1" if len(student_shape) == 4 and len(teacher_shape) == 4 else "linear"
    if kind == "identity":
        if not _identity_compatible(student_shape, teacher_shape, match_spatial):
            raise ValueError(
                f"connector 'identity' needs matching shapes, got student {_fmt(student_shape)} "
                f"and teacher {_fmt(teacher_shape)}"
            )
        return nn.Identity()
    if kind in ("conv1x1", "conv3x3"):
        _check_conv_shapes(kind, student_shape, teacher_shape)
        output_size = tuple(teacher_shape[-2:]) if match_spatial else None
        return ConvConnector(student_shape[1], teacher_shape[1], 1 if kind == "conv1x1" else 3, output_size)
    _check_linear_shapes(kind, student_shape, teacher_shape)
    if kind == "linear":
        return nn.Linear(student_shape[-1], teacher_shape[-1])
    hidden = hidden_dim or teacher_shape[-1]
    return nn.Sequential(nn.Linear(student_shape[-1], hidden), nn.ReLU(inplace=True), nn.Linear(hidden, teacher_shape[-1]))


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
