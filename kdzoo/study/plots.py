"""The study's plots (PNG files): scatter plots of arm groups, reliability diagrams and
attention overlays of one representative arm. matplotlib is imported only when drawing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from kdzoo.api.keys import metric_key, split_key
from kdzoo.run.checkpoint import atomic_write
from kdzoo.study.arms import Arm, Group
from kdzoo.study.quantities import QUANTITY, group_spread
from kdzoo.tables import fmt

OVERLAY_ROWS = 4  # test images per attention-overlay figure
OVERLAY_IMAGES = "attn_overlay_images"  # the attention-iou metric's split-wide key (no role)


def save_figure(fig, path: Path) -> None:
    """PNG through a temporary file and a rename, like every file kdzoo writes."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


AXIS_LABELS = {
    "fidelity_student_ensemble": "fidelity student~ensemble (test top-1 agreement)",
    "test_top1": "student test top-1",
    "attn_iou_teacher_teacher": "teacher~teacher attention IoU (test)",
    "gap_at_best": "generalisation gap (train - test top-1 at best epoch)",
}


def _scatter_groups(groups: list[Group], x_key: str, y_key: str, path: Path, title: str) -> Path | None:
    """One point per arm group at its means, error bars one std over seeds each way."""
    points = [(g.label, group_spread(g, x_key), group_spread(g, y_key)) for g in groups]
    points = [(label, x, y) for label, x, y in points if x.mean is not None and y.mean is not None]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for label, x, y in points:
        ax.errorbar(x.mean, y.mean, xerr=x.std or 0.0, yerr=y.std or 0.0, fmt="o", capsize=3, label=label)
        ax.annotate(label, (x.mean, y.mean), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(AXIS_LABELS.get(x_key, QUANTITY[x_key].header))
    ax.set_ylabel(AXIS_LABELS.get(y_key, QUANTITY[y_key].header))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def plot_accuracy_vs_fidelity(groups: list[Group], path: Path) -> Path | None:
    return _scatter_groups(groups, "fidelity_student_ensemble", "test_top1", path, "Student accuracy vs fidelity (test; bars: std over seeds)")


def plot_attention_vs_gap(groups: list[Group], path: Path) -> Path | None:
    return _scatter_groups(groups, "attn_iou_teacher_teacher", "gap_at_best", path, "Teacher attention IoU vs generalisation gap")


def plot_reliability(arm: Arm, path: Path, split: str = "test", bins: int = 10) -> Path | None:
    """Reliability diagrams of the student and each teacher of one arm."""
    roles = [r for r in [arm.role, *arm.teacher_roles] if isinstance(arm.final.get(metric_key(split, f"reliability{bins}", r)), list)]
    if not roles:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(roles), figsize=(3.2 * len(roles), 3.4), squeeze=False)
    for ax, role in zip(axes[0], roles):
        filled = [b for b in arm.final[metric_key(split, f"reliability{bins}", role)] if b["count"]]
        ax.bar([(b["lower"] + b["upper"]) / 2 for b in filled], [b["accuracy"] for b in filled], width=1 / bins, edgecolor="black", alpha=0.7)
        ax.plot([0, 1], [0, 1], "--", color="grey")
        ece = arm.final.get(metric_key(split, f"ece{bins}", role))
        ax.set_title(f"{role} (ECE {fmt(ece, 3)})" if ece is not None else role, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
    axes[0][0].set_ylabel("accuracy")
    fig.suptitle(f"Reliability ({split}, {bins} bins): {arm.name}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def plot_attention_overlays(arm: Arm, path: Path, split: str = "test", rows: int = OVERLAY_ROWS) -> Path | None:
    """Test images with every model's attention map laid over them (from the attention-iou
    metric's ``attn_overlay`` lists)."""
    images = arm.final.get(split_key(split, OVERLAY_IMAGES))
    roles = [r for r in [arm.role, *arm.teacher_roles] if isinstance(arm.final.get(metric_key(split, "attn_overlay", r)), list)]
    if not isinstance(images, list) or not images or not roles:
        return None
    import numpy as np

    plt = _pyplot()
    count = min(rows, len(images))
    fig, axes = plt.subplots(count, len(roles) + 1, figsize=(1.8 * (len(roles) + 1), 1.8 * count), squeeze=False)
    for i in range(count):
        image = np.asarray(images[i], dtype=np.uint8).transpose(1, 2, 0)
        axes[i][0].imshow(image)
        for j, role in enumerate(roles, 1):
            attention = np.asarray(arm.final[metric_key(split, "attn_overlay", role)][i], dtype=float)
            axes[i][j].imshow(image)
            # extent pins the map onto the image's pixel grid whatever the map's resolution
            axes[i][j].imshow(attention, cmap="jet", alpha=0.5, extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5), vmin=0, vmax=1)
            if i == 0:
                axes[i][j].set_title(role, fontsize=9)
        if i == 0:
            axes[i][0].set_title("image", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"Attention ({split}): {arm.name}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def representative_arm(groups: list[Group], has: Callable[[Arm], bool]) -> Arm | None:
    """The first arm (groups in table order, lowest seed first) that has the data."""
    for group in groups:
        for arm in sorted(group.arms, key=lambda a: a.seed):
            if has(arm):
                return arm
    return None


def safe_file_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", label) or "run"


STRENGTH_PANELS = ("attn_iou_teacher_teacher", "fidelity_student_ensemble", "gap_at_best", "test_top1")


def plot_strength_axis(groups: list[Group], level_of_group: Callable[[Group], str | None], levels: list[str],
                       affinity: dict[str, float], path: Path) -> Path | None:
    """Dose-response: each quantity against teacher strength (affinity, or the level's rank
    when unmeasured), one line per teacher count, error bars one std over seeds."""
    placed = [(g, level_of_group(g)) for g in groups]
    placed = [(g, level) for g, level in placed if level in levels]
    if len(levels) < 2 or not placed:
        return None
    x_of = {level: affinity.get(level, float(rank)) for rank, level in enumerate(levels)}
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(STRENGTH_PANELS), figsize=(4.0 * len(STRENGTH_PANELS), 3.6), squeeze=False)
    for ax, key in zip(axes[0], STRENGTH_PANELS):
        for count in sorted({g.n_teachers for g, _ in placed}):
            points = sorted(((x_of[level], group_spread(g, key)) for g, level in placed if g.n_teachers == count), key=lambda p: p[0])
            points = [(x, s) for x, s in points if s.mean is not None]
            if points:
                ax.errorbar([x for x, _ in points], [s.mean for _, s in points], yerr=[s.std or 0.0 for _, s in points],
                            marker="o", capsize=3, label=f"{count} teacher{'s' if count > 1 else ''}")
        ax.set_title(AXIS_LABELS.get(key, QUANTITY[key].header), fontsize=8)
        ax.set_xlabel("teacher policy affinity (lower: stronger)" if affinity else "teacher strength rank")
        if affinity:
            ax.invert_xaxis()  # stronger to the right
        ax.set_xticks([x_of[level] for level in levels])
        ax.set_xticklabels([f"{level}\n{fmt(affinity[level], 2)}" if level in affinity else level for level in levels], fontsize=6)
        ax.grid(alpha=0.3)
    labelled = next((ax for ax in axes[0] if ax.get_legend_handles_labels()[0]), None)  # T~T IoU has no 1-teacher line
    if labelled is not None:
        labelled.legend(fontsize=7)
    fig.suptitle("Teacher augmentation strength vs the study's quantities (bars: std over seeds)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path
