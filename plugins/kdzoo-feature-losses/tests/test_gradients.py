"""Backward: finite gradients to student features and connector params, none to teacher features;
multi-teacher = mean of the single-teacher losses."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from kdzoo_feature_losses import LOSSES

# fcfd runs the networks' own stages, so fake feature networks cannot hold it: its gradient,
# multi-teacher and autocast checks run on real chained networks in test_fcfd.py.
RUNS_NETWORKS = {"fcfd"}
NAMES = sorted(set(LOSSES) - RUNS_NETWORKS)


def randn(*shape, seed=0, requires_grad=False):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).requires_grad_(requires_grad)


def student_features(requires_grad=True):
    return {
        "s1": randn(4, 8, 4, 4, seed=1, requires_grad=requires_grad),
        "s2": randn(4, 16, 2, 2, seed=2, requires_grad=requires_grad),
        "e": randn(4, 16, seed=3, requires_grad=requires_grad),
    }


def teacher_features(seed, widths=(6, 12), requires_grad=True):
    # requires_grad on purpose: the losses must detach teacher features themselves
    return {
        "t1": randn(4, widths[0], 4, 4, seed=seed, requires_grad=requires_grad),
        "t2": randn(4, widths[1], 2, 2, seed=seed + 1, requires_grad=requires_grad),
        "e": randn(4, widths[1], seed=seed + 2, requires_grad=requires_grad),
    }


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_student_and_connectors_but_not_teacher(harness, name):
    student, teacher = student_features(), teacher_features(seed=10)
    run = harness.on_features(name, student, [teacher])
    loss = run()
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    student_grads = [f.grad for f in student.values() if f.grad is not None]
    assert student_grads, f"{name}: no gradient reached the student features"
    assert all(torch.isfinite(g).all() for g in student_grads)
    assert any(g.abs().sum() > 0 for g in student_grads)
    assert all(f.grad is None for f in teacher.values()), f"{name}: gradient leaked into teacher features"
    for param_name, param in run.loss.named_parameters():
        assert param.grad is not None, f"{name}: connector parameter {param_name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient in {param_name}"


@pytest.mark.parametrize("name", NAMES)
def test_two_teachers_give_the_mean_of_single_teacher_losses(harness, name):
    student = student_features(requires_grad=False)
    teachers = [teacher_features(seed=10), teacher_features(seed=20, widths=(10, 20))]
    both = harness.on_features(name, student, teachers)
    singles = [harness.on_features(name, student, [teacher]) for teacher in teachers]
    for index, single in enumerate(singles):
        # same connector weights (and memory banks) as the multi-teacher loss's teacher `index`
        single.loss.per_teacher[0].load_state_dict(both.loss.per_teacher[index].state_dict())
        single.loss.eval()
    both.loss.eval()  # no memory-bank updates, BN in inference mode
    torch.manual_seed(0)  # CRD draws negatives: same draws, teacher by teacher
    combined = both()
    torch.manual_seed(0)
    first = singles[0]()
    second = singles[1]()
    assert_close(combined, (first + second) / 2)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_features_under_autocast_give_an_fp32_loss(harness, name):
    student = {k: v.to(torch.bfloat16) for k, v in student_features(requires_grad=False).items()}
    teacher = {k: v.to(torch.bfloat16) for k, v in teacher_features(seed=10, requires_grad=False).items()}
    run = harness.on_features(name, student, [teacher])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = run()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
