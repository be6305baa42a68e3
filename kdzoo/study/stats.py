"""The study's decision rule: matched-pair differences, their 95% confidence interval
(paired t) and effect size, and the verdict they support.

A finding is decided on matched pairs (arms equal in everything the comparison does not
vary: teacher count, student policy, seed), never on pooled means, whose spread mixes
the conditions. The interval is the paired t interval ``mean ± t(0.975, n-1) · sd / √n``:
with the handful of seeds a study affords, a bootstrap over pairs would understate the
uncertainty (it cannot reach past the observed differences), while the t interval is
exact for normal differences and conservative enough for small n.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from kdzoo.tables import fmt

# Two-sided 95% critical values of Student's t by degrees of freedom (standard tables).
# Between listed values the next lower df is used (a slightly wider, conservative interval);
# past the last, the normal 1.960.
T_CRITICAL_95 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
    11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086,
    21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042,
    40: 2.021, 60: 2.000, 120: 1.980,
}
NORMAL_CRITICAL_95 = 1.960

HELD, REVERSED, INCONCLUSIVE = "held", "reversed", "inconclusive"
CI_METHOD = "paired t, 95%"


def t_critical_95(df: int) -> float:
    if df < 1:
        raise ValueError("a t interval needs at least 2 pairs (1 degree of freedom)")
    if df > max(T_CRITICAL_95):
        return NORMAL_CRITICAL_95
    return T_CRITICAL_95[max(d for d in T_CRITICAL_95 if d <= df)]


@dataclass(frozen=True)
class PairedEstimate:
    """Mean of matched differences with its 95% paired-t interval and effect size."""

    n: int
    mean: float
    std: float | None  # sample std of the differences; None for one pair
    low: float | None
    high: float | None

    @property
    def effect_size(self) -> float | None:
        """Cohen's d_z: the mean difference in units of the differences' std."""
        if self.std is None:
            return None
        if self.std == 0:
            return math.copysign(math.inf, self.mean) if self.mean else 0.0
        return self.mean / self.std

    def text(self) -> str:
        interval = f", 95% CI [{self.low:+.4f}, {self.high:+.4f}]" if self.low is not None else ""
        effect = self.effect_size
        size = "" if effect is None else f", d_z {effect:+.2f}" if math.isfinite(effect) else ", d_z ±inf (no spread)"
        return f"{self.mean:+.4f}{interval}{size} over {self.n} pair{'s' if self.n != 1 else ''}"


def paired_estimate(differences: Iterable[float]) -> PairedEstimate | None:
    values = [float(d) for d in differences]
    if not values:
        return None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return PairedEstimate(len(values), mean, None, None, None)
    std = statistics.stdev(values)
    half = t_critical_95(len(values) - 1) * std / math.sqrt(len(values))
    return PairedEstimate(len(values), mean, std, mean - half, mean + half)


def decide(estimate: PairedEstimate | None, expect: int) -> str:
    """``held`` when the interval excludes 0 on the side the paper predicts (``expect`` -1:
    lower, +1: higher), ``reversed`` when it excludes 0 on the other side, else
    ``inconclusive`` (also below two pairs: no interval)."""
    if estimate is None or estimate.low is None:
        return INCONCLUSIVE
    if estimate.high < 0:
        return HELD if expect < 0 else REVERSED
    if estimate.low > 0:
        return HELD if expect > 0 else REVERSED
    return INCONCLUSIVE


def combine(verdicts: list[str]) -> str:
    """A finding of several parts: held when every part held, reversed when any part
    reversed, else inconclusive."""
    if verdicts and all(v == HELD for v in verdicts):
        return HELD
    if any(v == REVERSED for v in verdicts):
        return REVERSED
    return INCONCLUSIVE


def describe_mean(values: Iterable[float | None]) -> str:
    kept = [v for v in values if v is not None]
    if not kept:
        return ""
    return fmt(statistics.fmean(kept)) if len(kept) < 2 else f"{fmt(statistics.fmean(kept))} ± {fmt(statistics.stdev(kept))}"
