"""CRD, OFD and KD-SVD against their papers' formulas, written out here independently of
the package's helpers (the other feature losses: test_formulas.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

ZERO = torch.tensor(0.0)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def unit_rows(x):
    return x / x.norm(dim=-1, keepdim=True)


# --------------------------------------------------------------------------- CRD
def test_crd_nce_with_memory_banks(harness):
    s, t = randn(6, 16, seed=1), randn(6, 12, seed=2)
    num_samples, k, temperature = 10, 3, 0.07
    run = harness.on_features("crd", {"e": s}, [{"e": t}], params={"embed_dim": 4, "nce_k": k}, num_samples=num_samples)
    heads = run.modules()
    student_memory = unit_rows(randn(num_samples, 4, seed=3))
    teacher_memory = unit_rows(randn(num_samples, 4, seed=4))
    heads.student_memory.copy_(student_memory)
    heads.teacher_memory.copy_(teacher_memory)
    indices = torch.tensor([7, 0, 3, 9, 2, 5])
    rows = torch.cat([indices[:, None], torch.randint(0, num_samples, (6, k), generator=torch.Generator().manual_seed(5))], 1)
    run.loss.contrast_indices = lambda batch_indices, n: rows

    e_s = unit_rows(s @ heads.embed_student.weight.t() + heads.embed_student.bias).detach()
    e_t = unit_rows(t @ heads.embed_teacher.weight.t() + heads.embed_teacher.bias).detach()

    def nce(anchor, memory):
        scores = torch.exp(torch.stack([memory[rows[b]] @ anchor[b] for b in range(6)]) / temperature)  # (B, K+1)
        z = scores.mean() * num_samples  # estimated on the first batch
        p = scores / z
        noise = k / num_samples
        positive = torch.log(p[:, 0] / (p[:, 0] + noise + 1e-7)).sum()
        negative = torch.log(noise / (p[:, 1:] + noise + 1e-7)).sum()
        return -(positive + negative) / 6

    expected = nce(e_s, teacher_memory) + nce(e_t, student_memory)
    assert_close(run(indices=indices), expected)
    # momentum update of the rows of this batch, then re-normalised
    assert_close(heads.student_memory[indices], unit_rows(0.5 * student_memory[indices] + 0.5 * e_s))
    assert_close(heads.teacher_memory[indices], unit_rows(0.5 * teacher_memory[indices] + 0.5 * e_t))
    untouched = [i for i in range(num_samples) if i not in indices.tolist()]
    assert_close(heads.teacher_memory[untouched], teacher_memory[untouched])


def test_crd_clips_negatives_and_fixes_the_normaliser(harness):
    s, t = randn(6, 16, seed=1), randn(6, 12, seed=2)
    run = harness.on_features("crd", {"e": s}, [{"e": t}], num_samples=10)  # nce_k 16384 > N - 1
    assert run.loss.contrast_indices(torch.arange(6), 10).shape == (6, 10)
    run()
    heads = run.modules()
    normalizers = heads.normalizers.clone()
    assert (normalizers > 0).all()
    run(student={"e": s * 2})
    assert_close(heads.normalizers, normalizers)
    assert {"student_memory", "teacher_memory", "normalizers"} <= set(dict(heads.named_buffers()))


# ReviewKD: see test_reviewkd.py


# --------------------------------------------------------------------------- OFD
def normal_cdf(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def ofd_margin(mean, std):
    std = abs(std)
    if normal_cdf(-mean / std) > 0.001:
        density = math.exp(-((mean / std) ** 2) / 2) / math.sqrt(2 * math.pi)
        return mean - std * density / normal_cdf(-mean / std)
    return -3 * std


def test_ofd_partial_l2_with_batchnorm_margin(harness, known):
    s, t = randn(4, 6, 4, 4, seed=1), randn(4, 6, 4, 4, seed=2)
    norm = nn.BatchNorm2d(6)
    gammas, betas = [1.0, 0.5, 2.0, 1.0, -1.0, 0.3], [0.0, 0.2, -1.0, 5.0, -0.5, 0.1]
    with torch.no_grad():
        norm.weight.copy_(torch.tensor(gammas))
        norm.bias.copy_(torch.tensor(betas))
    run = harness.on_features("ofd", {"s": s}, [{"t": t}], teacher_modules={"t": norm})
    module = run.modules()[0]
    assert module.margin_from_batchnorm
    margin = torch.tensor([ofd_margin(b, g) for g, b in zip(gammas, betas)]).view(1, -1, 1, 1)
    assert_close(module.margin, margin)
    assert margin[0, 3].item() == -3.0  # P(x < 0) tiny for N(5, 1): -3 sigma
    known.identity_conv(module.connector)
    target = torch.maximum(t, margin)
    skipped = (s <= target) & (target <= 0)
    expected = ((s - target) ** 2 * (~skipped)).sum() / 4
    assert_close(run(), expected)
    assert_close(run(teachers=[{"t": s.clone()}]), ZERO)


def test_ofd_margin_is_zero_without_a_producing_batchnorm(harness):
    s, t = randn(4, 6, 4, 4, seed=1), randn(4, 6, 4, 4, seed=2)
    run = harness.on_features("ofd", {"s": s}, [{"t": t}])  # teacher module: nn.Identity
    assert not run.modules()[0].margin_from_batchnorm
    assert_close(run.modules()[0].margin, torch.zeros(1, 6, 1, 1))



# --------------------------------------------------------------------------- KD-SVD
def explicit_kdsvd(student_maps, teacher_maps, k=1, extra=3, scale=8.0):
    def top(x, count):
        _, values, vh = torch.linalg.svd(x.flatten(2).transpose(1, 2), full_matrices=False)
        return values[:, :count], vh[:, :count, :].transpose(1, 2)

    total = 0.0
    previous = None
    for s, t in zip(student_maps, teacher_maps):
        values_t, v_t = top(t, k)
        _, v_s = top(s, k + extra)
        aligned = torch.zeros_like(v_t)
        for b in range(s.shape[0]):
            for j in range(k):
                cosines = v_s[b].t() @ v_t[b, :, j]
                best = cosines.abs().argmax()
                aligned[b, :, j] = torch.sign(cosines[best]) * v_s[b, :, best]
        weights = (values_t / values_t.norm(dim=1, keepdim=True)).unsqueeze(1)
        current = (aligned * weights, v_t * weights)
        if previous is not None:
            rbf = [torch.exp(-((c.unsqueeze(2) - p.unsqueeze(1)) ** 2) / scale) for c, p in zip(current, previous)]
            total = total + ((rbf[0] - rbf[1]) ** 2).sum() / s.shape[0]
        previous = current
    return total


def test_kdsvd_rbf_of_aligned_singular_vectors(harness):
    student = {"s1": randn(4, 8, 4, 4, seed=1), "s2": randn(4, 8, 2, 2, seed=2)}
    teacher = {"t1": randn(4, 8, 4, 4, seed=3), "t2": randn(4, 8, 2, 2, seed=4)}
    run = harness.on_features("kdsvd", student, [teacher])
    assert_close(run(), explicit_kdsvd(list(student.values()), list(teacher.values())))
    same = {k.replace("s", "t"): v.clone() for k, v in student.items()}
    assert_close(run(teachers=[same]), ZERO, atol=1e-6, rtol=0)
    run2 = harness.on_features("kdsvd", student, [teacher], params={"num_vectors": 2, "extra_student_vectors": 1, "rbf_scale": 2.0})
    assert_close(run2(), explicit_kdsvd(list(student.values()), list(teacher.values()), 2, 1, 2.0))


def test_kdsvd_rejects_layers_with_too_few_singular_vectors(harness):
    student = {"s1": randn(4, 8, 4, 4, seed=1), "s2": randn(4, 8, 1, 1, seed=2)}
    teacher = {"t1": randn(4, 8, 4, 4, seed=3), "t2": randn(4, 8, 1, 1, seed=4)}
    with pytest.raises(ValueError, match=r"kdsvd: student layer 's2'.*at most 1 singular"):
        harness.on_features("kdsvd", student, [teacher])


def test_kdsvd_gradients_stay_finite_with_repeated_singular_values(harness):
    # dead channels give repeated zero singular values, where torch's SVD backward is non-finite
    def dead_channels(*shape, seed):
        x = torch.relu(randn(*shape, seed=seed))
        x[:, ::2] = 0
        return x.requires_grad_()

    student = {"s1": dead_channels(4, 8, 4, 4, seed=1), "s2": dead_channels(4, 8, 2, 2, seed=2)}
    teacher = {"t1": randn(4, 8, 4, 4, seed=3), "t2": randn(4, 8, 2, 2, seed=4)}
    run = harness.on_features("kdsvd", student, [teacher])  # equal widths: identity connectors
    run().backward()
    assert all(torch.isfinite(f.grad).all() for f in student.values())
