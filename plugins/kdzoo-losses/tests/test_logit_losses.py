"""Label and logit losses of kdzoo-losses, checked against the papers' formulas.

Every reference below is written out independently in float64 numpy (exp, log, sums)
from the paper's equations; none calls the package's helpers. Losses are built through
the plugin host and called with a DistillBatch, as the engine calls them.
"""

from __future__ import annotations

from functools import partial

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from kdzoo.api import Loss
from kdzoo.testing import logits_batch

B, K = 4, 5
TARGETS = torch.tensor([0, 3, 1, 4])

LOSS_NAMES = {"ce", "tfkd", "kd", "kd-ensemble", "dkd", "dist", "kd-logit-std", "ttm", "wttm", "nkd", "ctkd"}
LABEL_ONLY = {"ce", "tfkd"}


# --------------------------------------------------------------------------- fixtures
def build(host, name: str, **params) -> Loss:
    return host.registry.build("loss", name, params)


def make_logits(seed: int, scale: float = 2.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(B, K, generator=generator) * scale


make_batch = partial(logits_batch, targets=TARGETS)


def assert_value(loss: torch.Tensor, expected: float, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    expected_tensor = torch.tensor(float(expected), dtype=torch.float64)
    torch.testing.assert_close(loss.detach().double(), expected_tensor, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- numpy references
def np_(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) per row."""
    return (p * (np.log(p) - np.log(q))).sum(axis=1)


def ref_ce(s, t, y, label_smoothing=0.0):
    q = softmax(s)
    target = np.full_like(q, label_smoothing / K)
    target[np.arange(len(y)), y] += 1.0 - label_smoothing
    return -(target * np.log(q)).sum(axis=1).mean()


def ref_kd(s, t, y, temperature=4.0):
    return temperature**2 * kl_rows(softmax(t / temperature), softmax(s / temperature)).mean()


def ref_dkd(s, t, y, alpha=1.0, beta=8.0, temperature=4.0, factor=1.0):
    ps, pt = softmax(s / temperature), softmax(t / temperature)
    rows = np.arange(len(y))
    bs = np.stack([ps[rows, y], 1.0 - ps[rows, y]], axis=1)
    bt = np.stack([pt[rows, y], 1.0 - pt[rows, y]], axis=1)
    tckd = kl_rows(bt, bs)
    # Non-target distribution = full distribution without the target, renormalised.
    keep = np.ones_like(ps, dtype=bool)
    keep[rows, y] = False
    qs = ps[keep].reshape(len(y), -1)
    qt = pt[keep].reshape(len(y), -1)
    nckd = kl_rows(qt / qt.sum(1, keepdims=True), qs / qs.sum(1, keepdims=True))
    return factor * temperature**2 * (alpha * tckd + beta * nckd).mean()


def ref_dist(s, t, y, beta=1.0, gamma=1.0, tau=4.0):
    ys, yt = softmax(s / tau), softmax(t / tau)
    inter = np.mean([1.0 - np.corrcoef(ys[i], yt[i])[0, 1] for i in range(ys.shape[0])])
    intra = np.mean([1.0 - np.corrcoef(ys[:, c], yt[:, c])[0, 1] for c in range(ys.shape[1])])
    return tau**2 * (beta * inter + gamma * intra)


def ref_logit_std(s, t, y, temperature=2.0):
    def z(x):
        return (x - x.mean(1, keepdims=True)) / (x.std(1, ddof=1, keepdims=True) + 1e-7)

    return ref_kd(z(s), z(t), y, temperature)


def ref_ttm(s, t, y, gamma=0.2, weighted=False):
    powered = softmax(t) ** gamma
    power_sum = powered.sum(axis=1)
    kl = kl_rows(powered / power_sum[:, None], softmax(s))
    return ((power_sum if weighted else 1.0) * kl).mean()


def ref_nkd(s, t, y, temperature=3.0, gamma=3.5):
    rows = np.arange(len(y))
    target = -(softmax(t)[rows, y] * np.log(softmax(s)[rows, y])).mean()
    keep = np.ones_like(s, dtype=bool)
    keep[rows, y] = False
    qt = softmax(t / temperature)[keep].reshape(len(y), -1)
    qs = softmax(s / temperature)[keep].reshape(len(y), -1)
    qt, qs = qt / qt.sum(1, keepdims=True), qs / qs.sum(1, keepdims=True)
    non_target = -(qt * np.log(qs)).sum(axis=1).mean()
    return target + gamma * temperature**2 * non_target


def ref_tfkd(s, t, y, correct_prob=0.99, temperature=20.0):
    """The paper's equation (``convention: paper``)."""
    designed = np.full((len(y), s.shape[1]), (1.0 - correct_prob) / (s.shape[1] - 1))
    designed[np.arange(len(y)), y] = correct_prob
    softened = designed ** (1.0 / temperature)
    softened /= softened.sum(axis=1, keepdims=True)
    return temperature**2 * kl_rows(softened, softmax(s / temperature)).mean()


def ctkd_initial_temperature(init_logit=1.0, low=1.0, high=21.0):
    return low + (high - low) / (1.0 + math.exp(-init_logit))


# (name, params, reference(s, t, y) for one teacher; t is None for label-only losses)
CASES = [
    ("ce", {}, ref_ce),
    ("ce", {"label_smoothing": 0.2}, lambda s, t, y: ref_ce(s, t, y, 0.2)),
    ("tfkd", {"convention": "paper"}, ref_tfkd),
    ("tfkd", {"correct_prob": 0.6, "temperature": 2.0, "convention": "paper"}, lambda s, t, y: ref_tfkd(s, t, y, 0.6, 2.0)),
    ("kd", {}, ref_kd),
    ("kd", {"temperature": 3.0}, lambda s, t, y: ref_kd(s, t, y, 3.0)),
    ("kd-ensemble", {"temperature": 3.0}, lambda s, t, y: ref_kd(s, t, y, 3.0)),
    ("dkd", {"warmup_epochs": 0}, ref_dkd),
    (
        "dkd",
        {"alpha": 0.5, "beta": 2.0, "temperature": 2.0, "warmup_epochs": 0},
        lambda s, t, y: ref_dkd(s, t, y, 0.5, 2.0, 2.0),
    ),
    ("dist", {}, ref_dist),
    ("dist", {"beta": 2.0, "gamma": 0.5, "tau": 1.0}, lambda s, t, y: ref_dist(s, t, y, 2.0, 0.5, 1.0)),
    ("kd-logit-std", {}, ref_logit_std),
    ("ttm", {}, ref_ttm),
    ("ttm", {"gamma": 0.5}, lambda s, t, y: ref_ttm(s, t, y, 0.5)),
    ("wttm", {}, lambda s, t, y: ref_ttm(s, t, y, 0.2, weighted=True)),
    ("wttm", {"gamma": 0.5}, lambda s, t, y: ref_ttm(s, t, y, 0.5, weighted=True)),
    ("nkd", {}, ref_nkd),
    ("nkd", {"temperature": 2.0, "gamma": 1.0}, lambda s, t, y: ref_nkd(s, t, y, 2.0, 1.0)),
    ("ctkd", {}, lambda s, t, y: ref_kd(s, t, y, ctkd_initial_temperature())),
]
CASE_IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(CASES)]
TEACHER_LOSSES = sorted(LOSS_NAMES - LABEL_ONLY)
PER_TEACHER_LOSSES = [n for n in TEACHER_LOSSES if n != "kd-ensemble"]


def params_for(name: str) -> dict:
    # DKD's warm-up would scale everything by 1/20 at epoch 0; tests of other
    # properties want the full loss.
    return {"warmup_epochs": 0} if name == "dkd" else {}


# --------------------------------------------------------------------------- plugin host
def test_every_loss_registers_and_builds(host):
    assert "kdzoo-losses" not in host.registry.failures
    assert set(host.registry.names("loss")) >= LOSS_NAMES
    for name in LOSS_NAMES:
        component = host.registry.get("loss", name)
        assert component.plugin == "kdzoo-losses" and component.description
        loss = build(host, name)
        assert isinstance(loss, Loss)
        assert type(loss).uses_teachers is (name not in LABEL_ONLY)


def test_params_are_validated(host):
    with pytest.raises(ValidationError):
        build(host, "kd", temperature=0.0)
    with pytest.raises(ValidationError):
        build(host, "kd", temprature=2.0)  # typo: extra keys are refused
    with pytest.raises(ValidationError):
        build(host, "ce", label_smoothing=1.5)
    with pytest.raises(ValidationError):
        build(host, "ctkd", min_temperature=5.0, max_temperature=2.0)


def test_hook_module_does_not_import_torch():
    code = "import sys, kdzoo_losses; kdzoo_losses.register_losses; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- values
@pytest.mark.parametrize(("name", "params", "reference"), CASES, ids=CASE_IDS)
def test_value_matches_paper_formula(host, name, params, reference):
    s, t = make_logits(0), make_logits(1)
    loss = build(host, name, **params)
    teachers = [] if name in LABEL_ONLY else [t]
    value = loss(make_batch(s, teachers))
    assert value.dtype == torch.float32 and value.ndim == 0
    assert_value(value, reference(np_(s), np_(t), TARGETS.numpy()))


def test_hand_computed_values(host):
    same = make_logits(2)
    for name in ("kd", "ctkd", "kd-ensemble"):
        assert_value(build(host, name)(make_batch(same, [same.clone()])), 0.0)
    assert_value(build(host, "dist", tau=1.0)(make_batch(same, [same.clone()])), 0.0)
    # at the default tau = 4, fp32 rounding of the Pearson correlations is scaled by tau^2 = 16
    assert_value(build(host, "dist")(make_batch(same, [same.clone()])), 0.0, atol=2e-4)
    # LSKD compares z-scores: an affine map of the teacher's logits is already matched.
    assert_value(build(host, "kd-logit-std")(make_batch(3.0 * same + 7.0, [same])), 0.0, atol=1e-5)

    # Two classes, T = 1: the student says [1/2, 1/2], the teacher [3/4, 1/4].
    # TCKD = 0.75 ln(0.75/0.5) + 0.25 ln(0.25/0.5); with one non-target class NCKD = 0.
    student = torch.zeros(1, 2)
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    label = torch.tensor([0])
    binary_kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert binary_kl == pytest.approx(0.1308121)
    dkd = build(host, "dkd", alpha=1.0, beta=8.0, temperature=1.0, warmup_epochs=0)
    assert_value(dkd(make_batch(student, [teacher], targets=label)), binary_kl)
    # Tf-KD with a = 3/4 on two classes at T = 1 is the same KL.
    tfkd = build(host, "tfkd", correct_prob=0.75, temperature=1.0, convention="paper")
    assert_value(tfkd(make_batch(student, [], targets=label)), binary_kl)

    # Uniform logits: CE is ln K with or without smoothing.
    uniform = torch.zeros(B, K)
    for smoothing in (0.0, 0.3):
        assert_value(build(host, "ce", label_smoothing=smoothing)(make_batch(uniform)), math.log(K))

    # NKD, K = 3, everything uniform, T = 1: ln(3)/3 + gamma * ln(2).
    uniform3 = torch.zeros(1, 3)
    nkd = build(host, "nkd", temperature=1.0, gamma=1.5)
    assert_value(nkd(make_batch(uniform3, [uniform3], targets=label)), math.log(3) / 3 + 1.5 * math.log(2))

    # WTTM, uniform teacher on 2 classes: U = 2 * (1/2)^gamma, KL([.5,.5] || [2/3,1/3]).
    student = torch.tensor([[math.log(2.0), 0.0]])
    kl = 0.5 * math.log(0.75) + 0.5 * math.log(1.5)
    wttm = build(host, "wttm", gamma=0.5)
    assert_value(wttm(make_batch(student, [torch.zeros(1, 2)], targets=label)), math.sqrt(2.0) * kl)
    assert_value(build(host, "ttm", gamma=0.5)(make_batch(student, [torch.zeros(1, 2)], targets=label)), kl)


def test_dkd_warmup_follows_the_authors_epoch_count(host):
    s, t = make_logits(0), make_logits(1)
    full = ref_dkd(np_(s), np_(t), TARGETS.numpy())
    dkd = build(host, "dkd", warmup_epochs=20)
    # Epoch 0 here is the authors' epoch 1: factor 1/20; epoch 4 -> 5/20; past warm-up -> 1.
    for epoch, factor in ((0, 1 / 20), (4, 5 / 20), (19, 1.0), (50, 1.0)):
        assert_value(dkd(make_batch(s, [t], epoch=epoch, epochs=60)), factor * full)


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", sorted(LOSS_NAMES))
def test_gradient_reaches_student_only(host, name):
    student = make_logits(0).requires_grad_(True)
    # A teacher that *could* take gradient: the loss itself must not build a graph into it.
    teacher_a = make_logits(1).requires_grad_(True)
    teacher_b = make_logits(3).requires_grad_(True)
    teachers = [] if name in LABEL_ONLY else [teacher_a, teacher_b]
    build(host, name, **params_for(name))(make_batch(student, teachers)).backward()
    assert student.grad is not None
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert teacher_a.grad is None and teacher_b.grad is None


def ctkd_reference_kd(student: torch.Tensor, teacher: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Plain KD at temperature 1 + 20 * sigmoid(theta), written out (no reversal)."""
    tau = 1.0 + 20.0 / (1.0 + torch.exp(-theta))

    def log_probs(z):
        z = z / tau
        return z - torch.log(torch.exp(z).sum(dim=1, keepdim=True))

    teacher_log_probs = log_probs(teacher)
    per_sample = (torch.exp(teacher_log_probs) * (teacher_log_probs - log_probs(student))).sum(dim=1)
    return tau**2 * per_sample.mean()


@pytest.mark.parametrize(("epoch", "strength"), [(0, (1 - math.cos(math.pi / 10)) / 2), (4, 0.5), (9, 1.0), (30, 1.0)])
def test_ctkd_temperature_gradient_is_reversed(host, epoch, strength):
    s, t = make_logits(0), make_logits(1)
    student = s.clone().requires_grad_(True)
    ctkd = build(host, "ctkd", curriculum_epochs=10)
    assert ctkd.reversal_strength(epoch) == pytest.approx(strength)
    ctkd(make_batch(student, [t], epoch=epoch, epochs=40)).backward()

    # Reference in float64: at tau ~ 15.6 the KL is small and fp32 keeps ~3-4 digits of its gradient.
    reference_student = s.double().requires_grad_(True)
    theta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    ctkd_reference_kd(reference_student, t.double(), theta).backward()

    assert theta.grad.abs() > 1e-4
    # The temperature ascends the loss (gradient times -lambda); the student still descends it.
    torch.testing.assert_close(ctkd.temperature_logit.grad.double(), -strength * theta.grad, rtol=2e-3, atol=1e-8)
    torch.testing.assert_close(student.grad.double(), reference_student.grad, rtol=1e-3, atol=1e-7)


def test_ctkd_temperature_is_a_trainable_parameter(host):
    ctkd = build(host, "ctkd")
    assert [name for name, _ in ctkd.named_parameters()] == ["temperature_logit"]
    assert "temperature_logit" in ctkd.state_dict()
    assert ctkd.temperature().item() == pytest.approx(ctkd_initial_temperature(), rel=1e-6)


# --------------------------------------------------------------------------- teachers and dtypes
@pytest.mark.parametrize("name", PER_TEACHER_LOSSES)
def test_two_teachers_give_the_mean_of_single_teacher_losses(host, name):
    s, t1, t2 = make_logits(0), make_logits(1), make_logits(3)
    loss = build(host, name, **params_for(name))
    both = loss(make_batch(s, [t1, t2]))
    singles = (loss(make_batch(s, [t1])) + loss(make_batch(s, [t2]))) / 2
    torch.testing.assert_close(both, singles)


def test_kd_ensemble_distils_the_mean_logits(host):
    s, t1, t2 = make_logits(0), make_logits(1), make_logits(3)
    value = build(host, "kd-ensemble", temperature=3.0)(make_batch(s, [t1, t2]))
    assert_value(value, ref_kd(np_(s), (np_(t1) + np_(t2)) / 2, None, 3.0))
    per_teacher = build(host, "kd", temperature=3.0)(make_batch(s, [t1, t2]))
    assert abs(value.item() - per_teacher.item()) > 1e-3  # a different rule, not the same number
    with pytest.raises(ValueError):
        build(host, "kd-ensemble")(make_batch(s, []))


@pytest.mark.parametrize("name", sorted(LOSS_NAMES))
def test_bf16_logits_give_an_fp32_result(host, name):
    s, t = make_logits(0).bfloat16(), make_logits(1).bfloat16()
    teachers_bf16 = [] if name in LABEL_ONLY else [t]
    teachers_fp32 = [] if name in LABEL_ONLY else [t.float()]
    loss = build(host, name, **params_for(name))
    low = loss(make_batch(s, teachers_bf16))
    assert low.dtype == torch.float32
    # Same numbers in fp32: the loss must upcast before any arithmetic.
    torch.testing.assert_close(low, loss(make_batch(s.float(), teachers_fp32)), rtol=1e-6, atol=1e-7)
    # And close to the unrounded fp32 logits.
    teachers_exact = [] if name in LABEL_ONLY else [make_logits(1)]
    torch.testing.assert_close(low, loss(make_batch(make_logits(0), teachers_exact)), rtol=5e-2, atol=1e-2)


def test_label_only_losses_run_without_teachers(host):
    for name in LABEL_ONLY:
        value = build(host, name)(make_batch(make_logits(0)))
        assert torch.isfinite(value) and value > 0
    with pytest.raises(ValueError):
        build(host, "kd")(make_batch(make_logits(0)))
