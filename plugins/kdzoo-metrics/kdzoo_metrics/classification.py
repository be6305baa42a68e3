"""Per-sample prediction metrics: accuracy, fidelity, KL divergence, predictive entropy.

All are whole-set means (sums over samples divided by the number of samples), so the
figures do not depend on how the split is cut into batches.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from kdzoo.api import EvalBatch, Metric
from kdzoo_metrics.predictions import predicted_class, top_classes
from kdzoo.api import pair_key, role_key, role_logits, role_pairs
from kdzoo_metrics.tally import Tally


class _SampleMean(Metric):
    """Sums per key divided by the number of samples seen."""

    def reset(self) -> None:
        self.tally = Tally()
        self.samples = 0

    def compute(self) -> dict[str, Any]:
        if self.samples == 0:
            return {}
        return {name: float(self.tally[name]) / self.samples for name in self.tally.names()}


class Accuracy(_SampleMean):
    """Top-k accuracy (a fraction in [0, 1]) of every role and of the teachers' ensemble.

    Keys ``top<k>/<role>``; a k above the number of classes is skipped. The top-k
    classes are :func:`kdzoo_metrics.predictions.top_classes`: on tied logits the
    lowest class index ranks first, so top-1 is the share of samples whose
    :func:`~kdzoo_metrics.predictions.predicted_class` (the first maximal logit, the
    class fidelity, MI and ECE use) is the target, and top-k always includes it.
    """

    def update(self, batch: EvalBatch) -> None:
        for role, logits in role_logits(batch).items():
            ks = [k for k in dict.fromkeys(self.params.topk) if k <= logits.shape[1]]
            if not ks:
                continue
            targets = batch.targets.to(logits.device)
            ranked = top_classes(logits, max(ks))
            hits = ranked == targets[:, None]
            for k in ks:
                self.tally.add(role_key(f"top{k}", role), hits[:, :k].any(dim=1).sum())
        self.samples += len(batch.targets)


class Fidelity(_SampleMean):
    """Top-1 agreement: the share of samples on which two models' predicted classes agree.

    The predicted class is :func:`kdzoo_metrics.predictions.predicted_class`: the
    first maximal logit (lowest class index on ties), the same rule as top-1 accuracy.
    Keys ``fidelity/<A>~<B>`` for the pairs of :func:`kdzoo.api.role_pairs`.
    """

    def update(self, batch: EvalBatch) -> None:
        predictions = {role: predicted_class(logits) for role, logits in role_logits(batch).items()}
        for left, right in role_pairs(batch):
            self.tally.add(pair_key("fidelity", left, right), (predictions[left] == predictions[right]).sum())
        self.samples += len(batch.targets)


class KLDivergence(_SampleMean):
    """Mean KL divergence between two models' predictive distributions: ``KL(teacher ‖ student)``.

    Direction: ``kl/A~B`` is ``KL(p_B ‖ p_A) = sum_k p_B log(p_B / p_A)``, the
    right-hand (teacher or ensemble) side being the reference distribution: for
    ``kl/student~t1`` that is ``KL(p_t1 ‖ p_student)`` and for ``kl/student~ensemble``
    ``KL(p_ensemble ‖ p_student)``, the divergence the KD loss minimises; for a teacher
    pair ``kl/t1~t2`` it is ``KL(p_t2 ‖ p_t1)``. Distributions are ``softmax(logits / T)``
    with ``T = temperature`` (no ``T^2`` factor). Note: the study authors' logged KL is
    ``KL(p_student ‖ p_teacher) * 10`` per batch; this is the unscaled whole-set mean.
    """

    def update(self, batch: EvalBatch) -> None:
        temperature = self.params.temperature
        log_probs = {role: F.log_softmax(logits / temperature, dim=1) for role, logits in role_logits(batch).items()}
        for left, right in role_pairs(batch):
            # kl_div(input=log q, target=log p, log_target=True) sums p * (log p - log q).
            per_sample = F.kl_div(log_probs[left], log_probs[right], reduction="none", log_target=True).sum(dim=1)
            self.tally.add(pair_key("kl", left, right), per_sample.double().sum())
        self.samples += len(batch.targets)


def predictive_entropy(logits: Tensor) -> Tensor:
    """Entropy (nats) of ``softmax(logits)`` per sample, from log-probabilities for stability."""
    log_probs = F.log_softmax(logits.float(), dim=1)
    return -(log_probs.exp() * log_probs).sum(dim=1)


class PredictiveEntropy(_SampleMean):
    """Mean predictive entropy (nats) of every role and of the ensemble: ``entropy/<role>``."""

    def update(self, batch: EvalBatch) -> None:
        for role, logits in role_logits(batch).items():
            self.tally.add(role_key("entropy", role), predictive_entropy(logits).double().sum())
        self.samples += len(batch.targets)


__all__ = ["Accuracy", "Fidelity", "KLDivergence", "PredictiveEntropy", "predictive_entropy"]
