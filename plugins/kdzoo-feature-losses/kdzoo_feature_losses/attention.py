"""Losses on what a layer attends to: attention transfer and neuron selectivity transfer."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo_feature_losses import ATParams, NSTParams
from kdzoo_feature_losses._base import LayerwiseLoss
from kdzoo_feature_losses._math import attention_map, polynomial_mmd, pool_to_common_size


class AttentionTransferLoss(LayerwiseLoss):
    """Activation-based attention transfer.

    Zagoruyko & Komodakis (2017), "Paying More Attention to Attention: Improving the
    Performance of Convolutional Neural Networks via Attention Transfer", ICLR 2017,
    arXiv:1612.03928.

    Per layer pair, the larger *feature map* is first average-pooled to the smaller
    spatial size; then ``Q = vec(mean_c |A_c|^p)`` (p = 2) and ``q = Q / ||Q||_2``.

    ``convention: reference`` (default) follows RepDistiller ``distiller_zoo/AT.py`` and
    mdistiller ``mdistiller/distillers/AT.py`` (the authors' code does the same):
    ``mean over batch and positions of (q_S - q_T)^2`` per layer, **summed** over layer
    pairs. Published weight: beta = 1000 (RepDistiller ``-b 1000``, mdistiller
    ``AT.LOSS.FEAT_WEIGHT``). The references use ``A^p`` where this uses ``|A|^p`` (the
    paper's); they agree for even p and for post-ReLU taps.

    ``convention: paper``: the paper's eq. (2), ``beta/2 * sum_j ||q_S - q_T||_2`` (the
    unsquared distance) averaged over the batch; the 1/2 is included, so the spec weight
    is the paper's beta (which its text sets to 1000 divided by the map's size and the
    batch size, per layer).

    No parameters; channel counts may differ. Defaults tap all declared stages, as the
    references do (RepDistiller ``feat[1:-1]``, mdistiller ``feats[1:]``).
    """

    loss_name = "at"
    params_model = ATParams
    default_taps = "all_stages"
    feature_kind = "map"

    def layer_weights(self, count: int) -> list[float]:
        return [1.0] * count  # summed over layers in both conventions

    def layer_loss(self, student: Tensor, teacher: Tensor, module: nn.Module) -> Tensor:
        student, teacher = pool_to_common_size(student, teacher)
        student_q = F.normalize(attention_map(student, self.params.p).flatten(1), p=2, dim=1)
        teacher_q = F.normalize(attention_map(teacher, self.params.p).flatten(1), p=2, dim=1)
        if self.params.convention == "paper":
            # ||.||_2 of a difference: clamp the squared norm so identical maps keep a finite gradient
            return 0.5 * (student_q - teacher_q).pow(2).sum(dim=1).clamp(min=1e-24).sqrt().mean()
        return (student_q - teacher_q).pow(2).mean()


class NeuronSelectivityLoss(LayerwiseLoss):
    """Neuron selectivity transfer: MMD between the distributions of channel activation patterns.

    Huang & Wang (2017), "Like What You Like: Knowledge Distill via Neuron Selectivity
    Transfer", arXiv:1707.01219.

    Each channel's ``H*W`` activation map, L2-normalised, is one sample; the loss is the
    squared MMD with the polynomial kernel ``k(x, y) = (x.y + c)^d``, d = 2, c = 0:
    ``mean_{i,i'} k(s_i, s_i') + mean_{j,j'} k(t_j, t_j') - 2 mean_{i,j} k(s_i, t_j)``,
    averaged over the batch. Channel counts may differ; the larger map is average-pooled
    to the smaller spatial size.

    Follows RepDistiller ``distiller_zoo/NST.py`` (and mdistiller ``NST.py``): all stages
    tapped, per-layer MMDs **summed**. Published weight: 50 (RepDistiller ``-b 50``,
    mdistiller ``NST.LOSS.FEAT_WEIGHT``). The paper writes ``beta/2 * MMD^2``: its beta is
    twice the spec weight.
    """

    loss_name = "nst"
    params_model = NSTParams
    default_taps = "all_stages"
    feature_kind = "map"

    def layer_weights(self, count: int) -> list[float]:
        return [1.0] * count

    def layer_loss(self, student: Tensor, teacher: Tensor, module: nn.Module) -> Tensor:
        student, teacher = pool_to_common_size(student, teacher)
        student_patterns = F.normalize(student.flatten(2), p=2, dim=2)
        teacher_patterns = F.normalize(teacher.flatten(2), p=2, dim=2)
        return polynomial_mmd(student_patterns, teacher_patterns).mean()
