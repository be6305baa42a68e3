"""Online distillation among students trained together (a fused pass's peers)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.api import DistillBatch, Loss


class DeepMutualLearningLoss(Loss):
    """Deep mutual learning: Zhang, Xiang, Hospedales and Lu, "Deep Mutual Learning",
    CVPR 2018, arXiv:1706.00384.

    Students of one fused pass learn from each other: each minimises its task loss plus
    ``1/(K-1) sum_{l != k} KL(p_l || p_k)``, the other students' predictions detached.
    Follows the authors' code (YingZhangDUT/Deep-Mutual-Learning, ``train_image_classifier.py``,
    ``kl_loss_compute``): per peer, the KL summed over classes and averaged over the batch
    (``reduction="batchmean"``), at temperature 1, averaged over the K-1 peers; the
    published weight is 1 next to CE at 1. ``temperature`` other than 1 softens both
    sides and multiplies by T^2 (as KD does).

    Needs peers (``uses_peers``): a grid whose arms train fused in one process, e.g. a
    matrix over ``init_seed`` (one architecture, students that start apart) or over the
    student model; the paper's alternating updates become one step per student on the
    same batch, each seeing the others' predictions before any of them steps.
    """

    uses_teachers = False
    uses_peers = True

    def forward(self, batch: DistillBatch) -> Tensor:
        if not batch.peers:
            raise ValueError("dml learns from peer students: it needs a fused pass of two or more arms")
        temperature = self.params.temperature
        log_p = F.log_softmax(batch.student.logits.float() / temperature, dim=1)
        terms = [F.kl_div(log_p, F.softmax(peer.logits.float() / temperature, dim=1), reduction="batchmean")
                 for peer in batch.peers.values()]
        return torch.stack(terms).mean() * temperature**2
