"""The two-view losses against their formulas, written out independently: CRLD and MLKD's
strong-view form (the authors' KD_ours).

Every reference is float64 numpy with explicit loops over samples, from the authors' code
as the losses' docstrings name it; none calls the package's helpers. The losses are built
through the plugin host and called with a DistillBatch whose ``views["strong"]`` holds the
second view's logits (``kdzoo.testing.logits_batch(views=...)``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from kdzoo.api import ViewRequest
from kdzoo.testing import logits_batch, make_distill_batch, tiny_network_pair

B, K = 8, 5
TARGETS = torch.tensor([0, 3, 1, 4, 3, 0, 2, 2])


def build(host, name, **params):
    return host.registry.build("loss", name, params)


def logits(seed: int, scale: float) -> torch.Tensor:
    return torch.randn(B, K, generator=torch.Generator().manual_seed(seed)) * scale


# Teachers sharp enough that some samples pass tau_w = 0.9 and some do not, on both views.
S_WEAK, S_STRONG = logits(1, 2.0), logits(2, 2.0)
T_WEAK, T_STRONG = logits(3, 3.5), logits(4, 3.5)


def two_views(s_weak=S_WEAK, t_weak=(T_WEAK,), s_strong=S_STRONG, t_strong=(T_STRONG,)):
    return logits_batch(s_weak, list(t_weak), targets=TARGETS, views={"strong": (s_strong, list(t_strong))})


def np_(x: torch.Tensor) -> np.ndarray:
    return x.double().numpy()


def softmax(row: np.ndarray) -> np.ndarray:
    e = np.exp(row - row.max())
    return e / e.sum()


def kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0))


def kd(student_row: np.ndarray, teacher_row: np.ndarray, temperature: float) -> float:
    """One sample's T^2 * KL(softmax(t/T) || softmax(s/T))."""
    return temperature**2 * kl(softmax(teacher_row / temperature), softmax(student_row / temperature))


def cross_entropy(rows: np.ndarray, targets) -> float:
    return float(np.mean([-math.log(softmax(row)[y]) for row, y in zip(rows, targets)]))


def close(value: torch.Tensor, expected: float) -> None:
    torch.testing.assert_close(value.detach().double(), torch.tensor(float(expected), dtype=torch.float64), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- CRLD
def ref_crld(sw, ss, tw, ts, y, temperature=4.0, tau_w=0.9, tau_s=0.2, within_weight=2.0, cross_weight=0.5, ce=1.0):
    within = cross = 0.0
    for i in range(len(y)):
        confident_w = 1.0 if softmax(tw[i]).max() >= tau_w else 0.0
        confident_s = 1.0 if softmax(ts[i]).max() >= tau_s else 0.0
        within += confident_w * (kd(sw[i], tw[i], temperature) + kd(ss[i], ts[i], temperature))
        cross += confident_s * (kd(ss[i], tw[i], temperature) + kd(sw[i], ts[i], temperature))
    return ce * cross_entropy(ss, y) + within_weight * within / len(y) + cross_weight * cross / len(y)


def test_the_fixture_has_samples_on_both_sides_of_each_threshold():
    conf_w = torch.softmax(T_WEAK, 1).amax(1)
    conf_s = torch.softmax(T_STRONG, 1).amax(1)
    assert 0 < int((conf_w >= 0.9).sum()) < B and 0 < int((conf_s >= 0.6).sum()) < B


def test_crld_matches_the_authors_formula(host):
    args = [np_(S_WEAK), np_(S_STRONG), np_(T_WEAK), np_(T_STRONG), TARGETS.tolist()]
    close(build(host, "crld")(two_views()), ref_crld(*args))
    custom = {"temperature": 2.0, "tau_w": 0.5, "tau_s": 0.6, "within_weight": 1.0, "cross_weight": 3.0, "strong_ce_weight": 0.25}
    expected = ref_crld(*args, temperature=2.0, tau_w=0.5, tau_s=0.6, within_weight=1.0, cross_weight=3.0, ce=0.25)
    close(build(host, "crld", **custom)(two_views()), expected)


def test_crld_masks_count_every_sample_in_the_mean(host):
    # tau 1.0 keeps no sample: only the strong view's CE is left (the mean still over all B)
    close(build(host, "crld", tau_w=1.0, tau_s=1.0)(two_views()), cross_entropy(np_(S_STRONG), TARGETS.tolist()))
    # tau 0 keeps every sample: plain sums of the four KD terms
    args = [np_(S_WEAK), np_(S_STRONG), np_(T_WEAK), np_(T_STRONG), TARGETS.tolist()]
    close(build(host, "crld", tau_w=0.0, tau_s=0.0)(two_views()), ref_crld(*args, tau_w=0.0, tau_s=0.0))


def test_crld_is_the_mean_over_teachers_and_only_cross_view_when_the_student_copies(host):
    second_w, second_s = logits(5, 3.0), logits(6, 3.0)
    loss = build(host, "crld")
    both = loss(two_views(t_weak=(T_WEAK, second_w), t_strong=(T_STRONG, second_s)))
    one = loss(two_views())
    other = loss(two_views(t_weak=(second_w,), t_strong=(second_s,)))
    torch.testing.assert_close(both, (one + other) / 2)
    copied = loss(two_views(s_weak=T_WEAK, s_strong=T_STRONG))  # the within-view terms vanish, the cross-view ones not
    args = [np_(T_WEAK), np_(T_STRONG), np_(T_WEAK), np_(T_STRONG), TARGETS.tolist()]
    close(copied, ref_crld(*args, within_weight=0.0))
    assert float(copied) > cross_entropy(np_(T_STRONG), TARGETS.tolist()) + 0.1


def test_crld_asks_for_the_strong_view_it_names(host):
    assert build(host, "crld").views() == {
        "strong": ViewRequest("randaugment", {"num_ops": 2, "magnitude": 15, "padding_mode": "zeros"})
    }
    custom = build(host, "crld", strong_view={"name": "strong", "params": {"size": 8}})
    assert custom.views() == {"strong": ViewRequest("strong", {"size": 8})}
    for bad in ({"tau_w": 1.5}, {"tau_s": -0.1}, {"temperature": 0.0}, {"strong_view": {"params": {}}}):
        with pytest.raises(ValidationError):
            build(host, "crld", **bad)


def test_crld_trains_the_student_on_both_views_and_never_a_teacher(host):
    student, teacher = tiny_network_pair()
    loss = build(host, "crld", tau_w=0.0)  # every sample counts: the tiny teacher is not confident
    batch = make_distill_batch(loss, student, teacher, teacher_requires_grad=True)
    strong = batch.views["strong"]
    strong.student.logits.retain_grad()
    batch.student.logits.retain_grad()
    loss(batch).backward()
    assert bool(batch.student.logits.grad.ne(0).any()) and bool(strong.student.logits.grad.ne(0).any())
    assert all(t.logits.grad is None for t in [*batch.teachers, *strong.teachers])


# ----------------------------------------------------------------------------- MLKD, two views
def ref_mlkd(sw, ss, tw, ts, y, temperatures=(2.0, 3.0, 4.0, 5.0, 6.0), strong=None, strong_ce=1 / 9):
    """KD_ours: the masked weak-view levels, plus (two views) the unmasked KD block and the strong CE."""
    n, c = tw.shape
    probs = np.array([softmax(row) for row in tw])
    confidence = probs.max(axis=1)
    sample_share = float(np.mean(confidence <= np.percentile(confidence, 50)))
    class_confidence = probs.sum(axis=0)
    class_share = float(np.mean(class_confidence <= np.percentile(class_confidence, 50)))
    total = 0.0
    for temperature in temperatures:
        p_t = np.array([softmax(row / temperature) for row in tw])
        p_s = np.array([softmax(row / temperature) for row in sw])
        instance = np.mean([kd(sw[i], tw[i], temperature) for i in range(n)])
        batch_level = float(((p_t @ p_t.T - p_s @ p_s.T) ** 2).sum()) / n
        class_level = float(((p_t.T @ p_t - p_s.T @ p_s) ** 2).sum()) / c
        total += sample_share * (instance + batch_level) + class_share * class_level
        if strong is not None:
            s, t = (ss, ts) if temperature in strong else (sw, tw)
            total += np.mean([kd(s[i], t[i], temperature) for i in range(n)])
    if strong is not None:
        total += strong_ce * cross_entropy(ss, y)
    return total


STRONG_VIEW = {"name": "randaugment", "params": {"num_ops": 2, "magnitude": 15}}


def test_mlkd_two_views_match_kd_ours(host):
    args = [np_(S_WEAK), np_(S_STRONG), np_(T_WEAK), np_(T_STRONG), TARGETS.tolist()]
    loss = build(host, "mlkd", strong_view=STRONG_VIEW)
    close(loss(two_views()), ref_mlkd(*args, strong=(3.0, 4.0, 5.0)))
    everywhere = build(host, "mlkd", strong_view=STRONG_VIEW, strong_temperatures=[2, 3, 4, 5, 6], strong_ce_weight=0.5)
    close(everywhere(two_views()), ref_mlkd(*args, strong=(2.0, 3.0, 4.0, 5.0, 6.0), strong_ce=0.5))
    few = build(host, "mlkd", strong_view=STRONG_VIEW, temperatures=[1.0, 4.0], strong_temperatures=[4.0])
    close(few(two_views()), ref_mlkd(*args, temperatures=(1.0, 4.0), strong=(4.0,)))


def test_mlkd_one_view_ignores_a_strong_view_and_asks_for_none(host):
    loss = build(host, "mlkd")
    assert loss.views() == {}
    args = [np_(S_WEAK), np_(S_STRONG), np_(T_WEAK), np_(T_STRONG), TARGETS.tolist()]
    close(loss(two_views()), ref_mlkd(*args))
    assert build(host, "mlkd", strong_view=STRONG_VIEW).views() == {"strong": ViewRequest("randaugment", STRONG_VIEW["params"])}


def test_mlkd_strong_temperatures_must_be_among_the_temperatures(host):
    with pytest.raises(ValidationError, match="not among temperatures"):
        build(host, "mlkd", strong_view=STRONG_VIEW, temperatures=[2.0, 4.0])
    build(host, "mlkd", temperatures=[2.0, 4.0])  # one view: strong_temperatures unused
