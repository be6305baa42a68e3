"""DeiT's distillation through a distillation token (hard and soft variants).

Touvron, Cord, Douze, Massa, Sablayrolles, Jégou, 2021, "Training data-efficient image
transformers & distillation through attention" (ICML 2021, arXiv 2012.12877). The student
is a ViT with two heads: the class-token head learns from the labels, the
distillation-token head from the teacher; at inference the two heads' logits are averaged
(timm's ``VisionTransformerDistilled`` does so whenever ``distilled_training`` is off, so
the student's ``Network`` logits are that average in training too).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdzoo.api import DistillBatch, KdzooError, Loss, ModelOutputs, Network
from kdzoo_losses._math import fp32, teacher_fp32


def head_paths(student: Network, class_head: str, dist_head: str) -> list[str]:
    """``[class_head, dist_head]`` once both resolve in the student; a clear error otherwise."""
    for role, path in (("class-token head", class_head), ("distillation head", dist_head)):
        try:
            student.submodule(path)
        except AttributeError:
            raise KdzooError(
                f"loss 'deit' needs a student with a class-token head and a distillation-token head; the "
                f"student ({type(student.body).__name__}) has no module '{path}' for its {role} (timm's "
                f"*_distilled_* ViTs, e.g. deit_tiny_distilled_patch16_224, have 'head' and 'head_dist'; "
                f"set params.class_head / params.dist_head to the student's own paths)"
            ) from None
    if class_head == dist_head:
        raise KdzooError(f"loss 'deit': class_head and dist_head must be two modules, both are '{class_head}'")
    return [class_head, dist_head]


class DeiTDistillation(Loss):
    """``(1 - alpha) * CE(class head, y) + alpha * distill(distillation head, teacher)``.

    As facebookresearch/deit ``losses.py`` (``DistillationLoss``): ``hard`` is the
    cross-entropy of the distillation head's logits against the teacher's argmax;
    ``soft`` is ``KL(softmax(t/tau) || softmax(s/tau)) * tau^2`` summed over batch and
    classes and divided by ``s.numel()`` = batch x classes (their "legacy PyTorch"
    reduction, deit issue 61), i.e. the batch-mean KL divided by the class count. The
    label term is their base criterion, ``LabelSmoothingCrossEntropy(smoothing=0.1)``
    by default (``label_smoothing``).

    The loss contains the label term: a spec uses it alone (``losses: [{name: deit}]``,
    weight 1), not next to ``ce``. The heads are read through taps of the student's
    ``class_head`` and ``dist_head`` modules (timm: ``head``, ``head_dist``); a student
    without them is refused. With several teachers the distillation term is averaged
    over teachers (the label term is the same for each).
    """

    def taps(self, student: Network, teacher: Network | None) -> tuple[list[str], list[str]]:
        return head_paths(student, self.params.class_head, self.params.dist_head), []

    def pair(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: DistillBatch, teacher_index: int) -> Tensor:
        class_logits = fp32(student.features[self.params.class_head])
        dist_logits = fp32(student.features[self.params.dist_head])
        base = F.cross_entropy(class_logits, batch.targets, label_smoothing=self.params.label_smoothing)
        teacher_logits = teacher_fp32(teacher.logits)
        if self.params.distillation_type == "hard":
            distill = F.cross_entropy(dist_logits, teacher_logits.argmax(dim=1))
        else:
            tau = self.params.tau
            distill = F.kl_div(
                F.log_softmax(dist_logits / tau, dim=1),
                F.log_softmax(teacher_logits / tau, dim=1),
                reduction="sum",
                log_target=True,
            ) * (tau * tau) / dist_logits.numel()
        alpha = self.params.alpha
        return (1 - alpha) * base + alpha * distill
