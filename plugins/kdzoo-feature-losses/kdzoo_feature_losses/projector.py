"""Projector-based embedding distillation: a trainable projector between the student's and the
teacher's pooled features, with a normalised distance (SRD) or an ensemble of projectors (PEFD)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.api import SetupContext
from kdzoo_feature_losses import PEFDParams, SRDParams
from kdzoo_feature_losses._base import LayerPair, LayerwiseLoss


class NormalisedProjector(nn.Module):
    """SRD's modules: a linear projector onto the teacher's width and two parameter-free
    batch norms (``affine=False``), one for each side."""

    def __init__(self, student_dim: int, teacher_dim: int, eps: float):
        super().__init__()
        self.projector = nn.Linear(student_dim, teacher_dim)
        self.norm_student = nn.BatchNorm1d(teacher_dim, eps=eps, affine=False)
        self.norm_teacher = nn.BatchNorm1d(teacher_dim, eps=eps, affine=False)


class ProjectorDistillationLoss(LayerwiseLoss):
    """SRD: ``log(sum_{b,d} |BN(P(z_s)) - BN(z_t)|^alpha)`` on the pooled embeddings.

    Miles & Mikolajczyk (2024), "Understanding the Role of the Projector in Knowledge
    Distillation", AAAI 2024, arXiv:2303.11098.

    ``P`` is a linear projector (with bias) from the student's embedding to the
    teacher's width, present even when the widths agree (the projector is the point of
    the paper); both sides go through a batch norm without affine parameters (batch
    statistics while training); the element-wise ``|difference|^alpha`` (alpha = 4) is
    summed over the batch and the dimensions and passed through the log, the paper's soft
    maximum, which makes the gradient scale-free.

    Follows the authors' ImageNet code, roymiles/Simple-Recipe-Distillation
    ``imagenet/torchdistill/losses/single.py`` (``OurDistillationLoss.forward_loss``): the
    embedding is the last stage averaged over H, W (the network's embedding tap here),
    ``BatchNorm1d(eps=1e-4, affine=False)``, and the total multiplies this term by **2**
    and adds a KD term at T = 1 with weight 1 on top of CE (weight 1): use ``weight: 2``
    with ``kd`` (``temperature: 1``) to reproduce it (``configs/ilsvrc2012/ours/res3418.yaml``,
    ResNet-34 -> ResNet-18). Their DeiT code (``deit/models.py``) uses a cross-correlation
    variant with ``eps=0``, not implemented here.

    Unlike SimKD, SRD does not reuse the teacher's classifier: the student keeps its own
    head. A ``log`` of an exact zero (identical normalised embeddings) is avoided by
    clamping the sum at 1e-12.
    """

    loss_name = "srd"
    params_model = SRDParams
    default_taps = "embedding"
    feature_kind = "embedding"

    def build_layer(self, pair: LayerPair, context: SetupContext, teacher_index: int) -> nn.Module:
        return NormalisedProjector(pair.student_shape[1], pair.teacher_shape[1], self.params.bn_eps)

    def layer_loss(self, student: Tensor, teacher: Tensor, module: nn.Module) -> Tensor:
        projected = module.norm_student(module.projector(student).float())
        target = module.norm_teacher(teacher)
        total = (projected - target).abs().pow(self.params.exponent).sum()
        return torch.log(total.clamp(min=1e-12))


class ProjectorEnsemble(nn.Module):
    """PEFD's projectors: ``num_projectors`` linear maps (with bias) onto the teacher's width, each
    followed by a ReLU; ``forward`` returns their mean."""

    def __init__(self, student_dim: int, teacher_dim: int, count: int):
        super().__init__()
        self.projectors = nn.ModuleList(nn.Linear(student_dim, teacher_dim) for _ in range(count))

    def forward(self, student: Tensor) -> Tensor:
        return torch.stack([torch.relu(projector(student)) for projector in self.projectors]).mean(dim=0)


class ProjectorEnsembleLoss(LayerwiseLoss):
    """PEFD: ``mean_b (1 - cos(mean_k ReLU(P_k(z_s)), z_t))`` on the pooled embeddings.

    Chen, Wang, Liu, Xu, de Hoog & Huang (2022), "Improved Feature Distillation via
    Projector Ensemble", NeurIPS 2022, arXiv:2210.15274.

    Each of the ``num_projectors`` (3) projectors is a linear layer (with bias, PyTorch's
    default initialisation, so they differ only by their random start) followed by a
    ReLU; their outputs are averaged and compared with the teacher's embedding by the
    cosine distance, averaged over the batch.

    Follows the authors' code, chenyd7/PEFD ``helper/loops.py`` (``distill == 'ours'``) with
    ``models/util.py:Reg``: the embedding is the pooled penultimate feature (``feat[-1]``,
    the network's embedding tap here), the loss ``(1 - cos_theta).sum() / bsz``. Their
    ``train_student.py`` builds a fourth projector it never uses; here exactly
    ``num_projectors`` exist. Published weight: 25 with CE weight 1 and no KD (``-a 0 -b 25``,
    ``scripts/run_cifar.sh``, ResNet-32x4 -> ResNet-8x4).
    """

    loss_name = "pefd"
    params_model = PEFDParams
    default_taps = "embedding"
    feature_kind = "embedding"

    def build_layer(self, pair: LayerPair, context: SetupContext, teacher_index: int) -> nn.Module:
        return ProjectorEnsemble(pair.student_shape[1], pair.teacher_shape[1], self.params.num_projectors)

    def layer_loss(self, student: Tensor, teacher: Tensor, module: nn.Module) -> Tensor:
        projected = module(student).float()
        return (1.0 - F.cosine_similarity(projected, teacher, dim=1, eps=1e-12)).mean()
