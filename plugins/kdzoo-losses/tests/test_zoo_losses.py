"""WSLD, NormKD, RLD, MLKD and CS-KD against their formulas, written out independently.

Every reference is float64 numpy with explicit loops or sums from the paper's equations
(and the authors' conventions named in each loss's docstring); none calls the package's
helpers. Losses are built through the plugin host and called with a DistillBatch.
"""

from __future__ import annotations

from functools import partial

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from kdzoo.testing import logits_batch

B, K = 6, 5
TARGETS = torch.tensor([0, 3, 1, 4, 3, 0])  # two same-class pairs: (0, 5) and (1, 4)
TEACHER_LOSSES = ("wsld", "normkd", "rld", "mlkd")


def build(host, name, **params):
    return host.registry.build("loss", name, params)


def logits(seed: int, scale: float = 2.5, rows: int = B) -> torch.Tensor:
    return torch.randn(rows, K, generator=torch.Generator().manual_seed(seed)) * scale


batch = partial(logits_batch, targets=TARGETS, epochs=100)  # student logits, teachers' logits


def close(value: torch.Tensor, expected: float, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    expected_tensor = torch.tensor(float(expected), dtype=torch.float64)
    torch.testing.assert_close(value.detach().double(), expected_tensor, rtol=rtol, atol=atol)


def softmax(row: np.ndarray) -> np.ndarray:
    e = np.exp(row - row.max())
    return e / e.sum()


def kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0))


def np_(x: torch.Tensor) -> np.ndarray:
    return x.double().numpy()


# --------------------------------------------------------------------------- references
def ref_wsld(s, t, y, temperature=4.0):
    total = 0.0
    for i in range(len(y)):
        ce_s = -math.log(softmax(s[i])[y[i]])
        ce_t = -math.log(softmax(t[i])[y[i]])
        weight = 1.0 - math.exp(-max(ce_s / (ce_t + 1e-7), 0.0))
        soft_ce = -float(np.sum(softmax(t[i] / temperature) * np.log(softmax(s[i] / temperature))))
        total += weight * soft_ce
    return temperature**2 * total / len(y)


def ref_normkd(s, t, y, t_norm=1.5):
    total = 0.0
    for i in range(len(y)):
        tt, ts = t_norm * np.std(t[i], ddof=1), t_norm * np.std(s[i], ddof=1)
        total += tt**2 * kl(softmax(t[i] / tt), softmax(s[i] / ts))
    return total / len(y)


def ref_rld(s, t, y, alpha=1.0, beta=8.0, temperature=4.0, scd_temperature=None, factor=1.0):
    ta = temperature if scd_temperature is None else scd_temperature
    scd = mcd = 0.0
    for i in range(len(y)):
        ps, pt = softmax(s[i] / ta), softmax(t[i] / ta)
        top = int(np.argmax(t[i]))
        scd += kl([pt[top], 1 - pt[top]], [ps[y[i]], 1 - ps[y[i]]])
        keep = [c for c in range(len(t[i])) if t[i][c] < t[i][y[i]]]  # classes ranked below the label
        if keep:
            mcd += kl(softmax(t[i][keep] / temperature), softmax(s[i][keep] / temperature))
    n = len(y)
    return factor * (alpha * ta**2 * scd / n + beta * temperature**2 * mcd / n)


def ref_mlkd(s, t, y, temperatures=(2.0, 3.0, 4.0, 5.0, 6.0)):
    confidence = np.array([softmax(row).max() for row in t])
    class_mass = np.array([softmax(row) for row in t]).sum(axis=0)
    m_i = float(np.mean(confidence <= np.percentile(confidence, 50)))
    m_c = float(np.mean(class_mass <= np.percentile(class_mass, 50)))
    total = 0.0
    for temperature in temperatures:
        ps = np.array([softmax(row / temperature) for row in s])
        pt = np.array([softmax(row / temperature) for row in t])
        instance = temperature**2 * np.mean([kl(pt[i], ps[i]) for i in range(len(y))])
        batch_level = np.sum((pt @ pt.T - ps @ ps.T) ** 2) / len(y)
        class_level = np.sum((pt.T @ pt - ps.T @ ps) ** 2) / pt.shape[1]
        total += m_i * (instance + batch_level) + m_c * class_level
    return total


def ref_cskd(s, y, temperature=4.0):
    anchors = []
    for i in range(len(y)):
        partners = [j for j in range(len(y)) if j != i and y[j] == y[i]]
        if partners:
            terms = [kl(softmax(s[j] / temperature), softmax(s[i] / temperature)) for j in partners]
            anchors.append(sum(terms) / len(terms))
    return temperature**2 * sum(anchors) / len(anchors) if anchors else 0.0


CASES = [
    ("wsld", {}, ref_wsld),
    ("wsld", {"temperature": 2.0}, lambda s, t, y: ref_wsld(s, t, y, 2.0)),
    ("normkd", {}, ref_normkd),
    ("normkd", {"t_norm": 1.0}, lambda s, t, y: ref_normkd(s, t, y, 1.0)),
    ("rld", {"warmup_epochs": 0}, ref_rld),
    ("rld", {"warmup_epochs": 0, "scd_temperature": 1.0, "alpha": 2.0, "beta": 3.0, "temperature": 2.0},
     lambda s, t, y: ref_rld(s, t, y, 2.0, 3.0, 2.0, 1.0)),
    ("mlkd", {}, ref_mlkd),
    ("mlkd", {"temperatures": [1.0, 4.0]}, lambda s, t, y: ref_mlkd(s, t, y, (1.0, 4.0))),
]


@pytest.mark.parametrize(("name", "params", "reference"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_value_matches_the_formula(host, name, params, reference):
    s, t = logits(0), logits(1, scale=3.0)
    value = build(host, name, **params)(batch(s, [t]))
    assert value.dtype == torch.float32 and value.ndim == 0
    close(value, reference(np_(s), np_(t), TARGETS.tolist()))


@pytest.mark.parametrize("temperature", [4.0, 2.0])
def test_cskd_matches_the_formula_over_same_class_pairs(host, temperature):
    s = logits(2)
    loss = build(host, "cskd", temperature=temperature)
    assert type(loss).uses_teachers is False
    close(loss(batch(s)), ref_cskd(np_(s), TARGETS.tolist(), temperature))


def test_cskd_hand_computed_pair_and_no_pairs(host):
    # Two samples of class 0 at T = 1: [ln 3, 0] -> [3/4, 1/4] and [0, 0] -> [1/2, 1/2];
    # each is the other's target; the class-1 sample has no partner and is left out.
    s = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0], [5.0, -5.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1])
    kl_a = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(p_0 || p_1): anchor 1
    kl_b = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # KL(p_1 || p_0): anchor 0
    value = build(host, "cskd", temperature=1.0)(batch(s, targets=y))
    close(value, (kl_a + kl_b) / 2)
    value.backward()
    assert s.grad[2].abs().sum() == 0 and s.grad[:2].abs().sum() > 0  # the unpaired sample is untouched
    # No pair at all: 0, with a finite (zero) gradient rather than NaN.
    lone = logits(3, rows=3).requires_grad_(True)
    none = build(host, "cskd")(batch(lone, targets=torch.tensor([0, 1, 2])))
    none.backward()
    assert none.item() == 0.0 and torch.isfinite(lone.grad).all()


def test_cskd_targets_carry_no_gradient(host):
    # Gradient of KL(p_j || p_i) w.r.t. anchor i only: with one pair the gradient on each
    # row is T * (p_i - p_j) / 2 (the mean over the two anchors), since p_j is a constant.
    s = logits(4, rows=2).requires_grad_(True)
    y = torch.tensor([1, 1])
    build(host, "cskd", temperature=1.0)(batch(s, targets=y)).backward()
    p = torch.softmax(s.detach().double(), dim=1)
    torch.testing.assert_close(s.grad.double(), torch.stack([p[0] - p[1], p[1] - p[0]]) / 2, rtol=1e-5, atol=1e-7)


def test_wsld_weight_and_identity(host):
    # Student == teacher: ratio 1, weight 1 - 1/e, and the soft CE is the teacher's entropy at T.
    t = logits(5)
    value = build(host, "wsld", temperature=2.0)(batch(t.clone(), [t]))
    entropy = np.mean([-np.sum(softmax(r / 2.0) * np.log(softmax(r / 2.0))) for r in np_(t)])
    close(value, 4.0 * (1 - math.exp(-1.0)) * entropy, rtol=1e-4)  # ratio 1 up to the 1e-7 in its denominator
    # A student already right where the teacher is: CE_s -> 0, weight -> 0, the term vanishes.
    confident = torch.full((1, K), -20.0)
    confident[0, 2] = 20.0
    assert build(host, "wsld")(batch(confident, [logits(6, rows=1)], targets=torch.tensor([2]))).item() < 1e-6


def test_normkd_ignores_each_samples_logit_scale(host):
    # Dividing by the std makes the softened distributions scale-free: a teacher scaled by 3
    # gives the same KL, weighted by 9x the squared temperature.
    s, t = logits(7), logits(8)
    loss = build(host, "normkd")
    torch.testing.assert_close(loss(batch(s, [3.0 * t])), 9.0 * loss(batch(s, [t])), rtol=1e-5, atol=1e-6)
    close(loss(batch(2.0 * t, [t])), 0.0, atol=1e-6)  # a scaled copy of the teacher is already matched


def test_rld_masks_the_classes_ranked_above_the_label(host):
    # The teacher ranks the label last: MCD masks everything and only SCD remains.
    t = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    s = torch.tensor([[0.5, -1.0, 2.0, 0.3]])
    y = torch.tensor([3])
    scd_only = build(host, "rld", warmup_epochs=0, beta=0.0)(batch(s, [t], targets=y))
    close(build(host, "rld", warmup_epochs=0)(batch(s, [t], targets=y)), scd_only.item())
    # With the label on top, MCD is plain KD over the non-target classes (DKD's NCKD).
    y_top = torch.tensor([0])
    mcd = build(host, "rld", warmup_epochs=0, alpha=0.0, beta=1.0, temperature=1.0)(batch(s, [t], targets=y_top))
    close(mcd, kl(softmax(np.array([2.0, 1.0, 0.0])), softmax(np.array([-1.0, 2.0, 0.3]))))


def test_rld_warmup_counts_epochs_from_one(host):
    s, t = logits(9), logits(10)
    full = ref_rld(np_(s), np_(t), TARGETS.tolist())
    rld = build(host, "rld")
    for epoch, factor in ((0, 1 / 20), (9, 10 / 20), (19, 1.0), (60, 1.0)):
        close(rld(batch(s, [t], epoch=epoch)), factor * full)


def test_mlkd_median_shares(host):
    # An odd batch: the median is the middle value, 3 of 5 samples lie at or below it.
    s, t = logits(11, rows=5), logits(12, rows=5)
    y = torch.tensor([0, 1, 2, 3, 4])
    close(build(host, "mlkd")(batch(s, [t], targets=y)), ref_mlkd(np_(s), np_(t), [0, 1, 2, 3, 4]))
    one = build(host, "mlkd", temperatures=[2.0])(batch(s, [t], targets=y))
    two = build(host, "mlkd", temperatures=[3.0])(batch(s, [t], targets=y))
    torch.testing.assert_close(build(host, "mlkd", temperatures=[2.0, 3.0])(batch(s, [t], targets=y)), one + two)
    close(build(host, "mlkd")(batch(t.clone(), [t], targets=y)), 0.0, atol=1e-6)


def test_params_are_validated(host):
    for name, bad in [("mlkd", {"temperatures": []}), ("mlkd", {"temperatures": [2.0, 0.0]}),
                      ("rld", {"scd_temperature": 0.0}), ("wsld", {"temperature": -1.0}),
                      ("normkd", {"t_norm": 0.0}), ("cskd", {"temprature": 4.0})]:
        with pytest.raises(ValidationError):
            build(host, name, **bad)


@pytest.mark.parametrize("name", TEACHER_LOSSES)
def test_gradient_reaches_the_student_only(host, name):
    student = logits(0).requires_grad_(True)
    teacher = logits(1).requires_grad_(True)
    build(host, name, **({"warmup_epochs": 0} if name == "rld" else {}))(batch(student, [teacher])).backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert teacher.grad is None


@pytest.mark.parametrize("name", TEACHER_LOSSES)
def test_two_teachers_give_the_mean(host, name):
    s, t1, t2 = logits(0), logits(1), logits(3)
    loss = build(host, name)
    both = loss(batch(s, [t1, t2]))
    torch.testing.assert_close(both, (loss(batch(s, [t1])) + loss(batch(s, [t2]))) / 2)


@pytest.mark.parametrize("name", [*TEACHER_LOSSES, "cskd"])
def test_bf16_logits_give_an_fp32_result(host, name):
    s, t = logits(0).bfloat16(), logits(1).bfloat16()
    teachers = [] if name == "cskd" else [t]
    loss = build(host, name)
    low = loss(batch(s, teachers))
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, loss(batch(s.float(), [x.float() for x in teachers])), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", [*TEACHER_LOSSES, "cskd"])
def test_autocast_does_not_lower_the_losses_own_arithmetic(host, name):
    # Under bf16 autocast, matrix products would run in bf16 (CS-KD's KL-by-product even
    # turned negative): the losses compute them in fp32, so the value does not move.
    s, t = logits(0), logits(1)
    teachers = [] if name == "cskd" else [t]
    loss = build(host, name)
    exact = loss(batch(s, teachers))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = loss(batch(s, teachers))
    assert under_autocast.dtype == torch.float32 and under_autocast.item() >= 0.0
    torch.testing.assert_close(under_autocast, exact, rtol=1e-5, atol=1e-6)
