"""``logit-mse`` against values worked out by hand on fixed logits (Kim et al. 2021; the authors'
jhoon-oh/kd_data ``mse_logit`` is ``nn.MSELoss()``: the mean over batch x classes)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from kdzoo.testing import logits_batch

# B = 2 samples, K = 3 classes.
STUDENT = [[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]]
# student - teacher_1 = [[1, 0, -2], [-1, -2, 3]]: squares [[1, 0, 4], [1, 4, 9]], row sums 5 and 14, total 19.
TEACHER_1 = [[0.0, 2.0, 5.0], [1.0, 1.0, 1.0]]
# student - teacher_2 = [[0, 0, 0], [0, -1, 4]]: squares [[0, 0, 0], [0, 1, 16]], row sums 0 and 17, total 17.
TEACHER_2 = [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]


def build(host, **params):
    return host.registry.build("loss", "logit-mse", params)


def tensor(rows, requires_grad=False):
    return torch.tensor(rows, dtype=torch.float32, requires_grad=requires_grad)


def close(value: torch.Tensor, expected: float) -> None:
    torch.testing.assert_close(value.detach().double(), torch.tensor(expected, dtype=torch.float64), rtol=0.0, atol=1e-6)


@pytest.mark.parametrize(
    "params, expected",
    [
        ({}, 19 / 6),  # default: mean over the 2 x 3 elements, as nn.MSELoss()
        ({"reduction": "elements"}, 19 / 6),
        ({"reduction": "classes"}, 19 / 2),  # the paper's squared L2 norm per sample, batch mean: (5 + 14) / 2
    ],
)
def test_one_teacher(host, params, expected):
    close(build(host, **params)(logits_batch(tensor(STUDENT), [tensor(TEACHER_1)])), expected)


@pytest.mark.parametrize(
    "reduction, expected",
    [
        # mean over teachers of each teacher's MSE: (19/6 + 17/6) / 2 = 3. The MSE to the teachers'
        # mean logits would be 16/6 and to their summed logits (the authors' --ensemble) 43/6.
        ("elements", 3.0),
        ("classes", 9.0),  # (19/2 + 17/2) / 2
    ],
)
def test_several_teachers_average_the_per_teacher_losses(host, reduction, expected):
    batch = logits_batch(tensor(STUDENT), [tensor(TEACHER_1), tensor(TEACHER_2)])
    close(build(host, reduction=reduction)(batch), expected)


def test_logits_are_not_normalised(host):
    # Shifting every student logit by 1 leaves softmax and centred logits unchanged but not the MSE:
    # student + 1 - teacher_1 = [[2, 1, -1], [0, -1, 4]], squares total 4 + 1 + 1 + 0 + 1 + 16 = 23.
    shifted = [[z + 1.0 for z in row] for row in STUDENT]
    close(build(host)(logits_batch(tensor(shifted), [tensor(TEACHER_1)])), 23 / 6)
    close(build(host)(logits_batch(tensor(TEACHER_1), [tensor(TEACHER_1)])), 0.0)


def test_gradient_reaches_the_student_only(host):
    student = tensor(STUDENT, requires_grad=True)
    teacher = tensor(TEACHER_1, requires_grad=True)
    build(host)(logits_batch(student, [teacher])).backward()
    # d/dz_s mean((z_s - z_t)^2) = 2 (z_s - z_t) / (B K) = (z_s - z_t) / 3
    expected = torch.tensor([[1.0, 0.0, -2.0], [-1.0, -2.0, 3.0]]) / 3
    torch.testing.assert_close(student.grad, expected, rtol=0.0, atol=1e-6)
    assert teacher.grad is None


def test_bf16_logits_are_compared_in_fp32(host):
    # The fixed logits are exact in bf16; the result is fp32 and equals the fp32 value.
    value = build(host)(logits_batch(tensor(STUDENT).bfloat16(), [tensor(TEACHER_1).bfloat16()]))
    assert value.dtype == torch.float32
    close(value, 19 / 6)


def test_unknown_reduction_is_refused(host):
    with pytest.raises(ValidationError):
        build(host, reduction="sum")
