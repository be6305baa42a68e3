"""Expected calibration error and reliability-diagram data, with equal-width confidence bins.

Which ECE: ``ece<n>`` is the usual bin-count-weighted ECE (Guo et al. 2017), the figure
the study reports ("ECE (10 bins, weighted)"); the study authors' unweighted mean over
bins is kept separately as ``ece<n>_bin_mean``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.api import EvalBatch, Metric
from kdzoo_metrics.predictions import predicted_class
from kdzoo.api import role_key, role_logits
from kdzoo_metrics.tally import Tally


def confidence_bins(confidence: Tensor, num_bins: int) -> Tensor:
    """Bin index of each confidence for bins ``(m/n, (m+1)/n]`` (lower edge open, as in
    Guo et al. 2017 and the study authors' code)."""
    # Upper edges in the confidence's own dtype, so 0.8 lands in (0.7, 0.8] as a
    # float32 comparison with 0.8 would put it.
    uppers = (torch.arange(1, num_bins + 1, dtype=torch.float64, device=confidence.device) / num_bins).to(confidence.dtype)
    return torch.bucketize(confidence, uppers).clamp_max(num_bins - 1)


class Calibration(Metric):
    """ECE of every role (ensemble included) for each bin count ``n`` in ``bins``.

    Keys per ``n`` and role:

    - ``ece<n>/<role>``: ECE weighted by bin counts, ``sum_b |acc_b - conf_b| * count_b / N``
      (Guo et al. 2017), the predicted class being
      :func:`kdzoo_metrics.predictions.predicted_class` (lowest class index on tied
      logits, as for top-1 accuracy) and the confidence its softmax probability (the
      max softmax probability);
    - ``ece<n>_bin_mean/<role>``: the *unweighted* mean of ``|acc_b - conf_b|`` over all
      ``n`` bins (empty bins count 0), which is what the study authors' ``ece_score``
      logs; kept to compare with the paper, not the reported ECE;
    - ``reliability<n>/<role>``: a list of ``n`` dicts ``{"lower", "upper", "count",
      "confidence", "accuracy"}`` (confidence and accuracy are None for empty bins).
    """

    def reset(self) -> None:
        self.tally = Tally()
        self.samples = 0

    def update(self, batch: EvalBatch) -> None:
        for role, logits in role_logits(batch).items():
            predicted = predicted_class(logits)
            # The predicted class has the largest logit, so its probability is the largest one.
            confidence = logits.softmax(dim=1).gather(1, predicted[:, None]).squeeze(1)
            correct = (predicted == batch.targets.to(predicted.device)).long()
            for n in dict.fromkeys(self.params.bins):
                # One-hot sums rather than weighted bincount: the latter has no
                # deterministic CUDA kernel, and n is small.
                in_bin = F.one_hot(confidence_bins(confidence, n), n).double()
                self.tally.add(f"count{n}/{role}", in_bin.sum(dim=0).long())
                self.tally.add(f"correct{n}/{role}", correct.double() @ in_bin)
                self.tally.add(f"confidence{n}/{role}", confidence.double() @ in_bin)
        self.samples += len(batch.targets)

    def compute(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.samples == 0:
            return out
        roles = [name.partition("/")[2] for name in self.tally.names() if name.startswith(f"count{self.params.bins[0]}/")]
        for role in roles:
            for n in dict.fromkeys(self.params.bins):
                count = self.tally[f"count{n}/{role}"].double().cpu()
                correct = self.tally[f"correct{n}/{role}"].cpu()
                confidence = self.tally[f"confidence{n}/{role}"].cpu()
                # |acc_b - conf_b| * count_b = |correct_b - confidence_sum_b|: no division per bin.
                out[role_key(f"ece{n}", role)] = float((correct - confidence).abs().sum()) / self.samples
                filled = count > 0
                gaps = torch.zeros(n, dtype=torch.float64)
                gaps[filled] = ((correct - confidence)[filled] / count[filled]).abs()
                out[role_key(f"ece{n}_bin_mean", role)] = float(gaps.mean())
                out[role_key(f"reliability{n}", role)] = [
                    {
                        "lower": b / n,
                        "upper": (b + 1) / n,
                        "count": int(count[b]),
                        "confidence": float(confidence[b] / count[b]) if filled[b] else None,
                        "accuracy": float(correct[b] / count[b]) if filled[b] else None,
                    }
                    for b in range(n)
                ]
        return out
