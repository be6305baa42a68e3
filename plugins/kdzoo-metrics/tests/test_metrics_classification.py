import math

import pytest
import torch

# Four samples, three classes. Argmaxes (worked out by hand):
#   t1       [0, 1, 2, 0]
#   t2       [1, 1, 2, 2]
#   ensemble [0, 1, 2, 2]   (mean of t1 and t2: rows [2, 1.5, 0], [0, 3, 1], [1, 0, 3], [1.5, .5, 2])
#   student  [0, 0, 2, 2]
#   targets  [0, 1, 2, 1]
T1 = torch.tensor([[3.0, 1, 0], [0, 3, 1], [1, 0, 3], [3, 0, 1]])
T2 = torch.tensor([[1.0, 2, 0], [0, 3, 1], [1, 0, 3], [0, 1, 3]])
STUDENT = torch.tensor([[2.0, 0, 0], [2, 1, 0], [0, 0, 2], [0, 1, 2]])
TARGETS = torch.tensor([0, 1, 2, 1])


@pytest.fixture
def fixed_batch(make_batch):
    return make_batch({"student": STUDENT, "t1": T1, "t2": T2}, TARGETS)


def test_accuracy_on_fixed_logits(build, run_metric, fixed_batch):
    result = run_metric(build("accuracy", topk=[1, 2, 5]), fixed_batch, batch_size=4)
    assert "top5/student" not in result  # only 3 classes
    assert result["top1/t1"] == 3 / 4
    assert result["top1/t2"] == 2 / 4
    assert result["top1/student"] == 2 / 4
    assert result["top1/ensemble"] == 3 / 4
    assert result["top2/t1"] == 3 / 4  # row 3 top-2 {0, 2}, target 1
    assert result["top2/t2"] == 4 / 4  # row 0 {1, 0} holds 0; row 3 {2, 1} holds 1
    assert result["top2/student"] == 4 / 4  # every top-1 miss (rows 1, 3) is second
    assert result["top2/ensemble"] == 3 / 4  # row 3 [1.5, .5, 2] -> {2, 0}, target 1: miss


def test_train_run_has_one_role_and_no_pairs(build, run_metric, make_batch):
    batch = make_batch({"model": T1}, TARGETS, teachers=(), student="model")
    assert run_metric(build("accuracy"), batch, 4) == {"top1/model": 3 / 4}
    assert run_metric(build("fidelity"), batch, 4) == {}
    assert run_metric(build("kl"), batch, 4) == {}


def test_fidelity_pairs_and_values(build, run_metric, fixed_batch):
    result = run_metric(build("fidelity"), fixed_batch, batch_size=3)
    assert result == {
        "fidelity/student~t1": 2 / 4,  # [0,0,2,2] vs [0,1,2,0]
        "fidelity/student~t2": 2 / 4,  # vs [1,1,2,2]
        "fidelity/student~ensemble": 3 / 4,  # vs [0,1,2,2]
        "fidelity/t1~t2": 2 / 4,
    }


def test_three_teachers_give_every_teacher_pair(build, run_metric, make_batch):
    batch = make_batch({"student": STUDENT, "a": T1, "b": T2, "c": STUDENT}, TARGETS, teachers=("a", "b", "c"))
    keys = list(run_metric(build("fidelity"), batch, 4))
    assert keys == [
        "fidelity/student~a",
        "fidelity/student~b",
        "fidelity/student~c",
        "fidelity/student~ensemble",
        "fidelity/a~b",
        "fidelity/a~c",
        "fidelity/b~c",
    ]


def test_kl_of_two_fixed_distributions(build, run_metric, make_batch):
    uniform = torch.log(torch.tensor([[0.5, 0.5]]))
    skewed = torch.log(torch.tensor([[0.9, 0.1]]))
    batch = make_batch({"student": uniform, "t1": skewed}, torch.tensor([0]), teachers=("t1",))
    result = run_metric(build("kl"), batch, 1)
    # KL(p_t1 || p_student): the teacher side is the reference.
    expected = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert result["kl/student~t1"] == pytest.approx(expected, rel=1e-6)
    assert result["kl/student~ensemble"] == pytest.approx(expected, rel=1e-6)  # one teacher: ensemble = t1

    # Temperature 2: softmax(log p / 2) is proportional to sqrt(p).
    a, b = math.sqrt(0.9), math.sqrt(0.1)
    q = (a / (a + b), b / (a + b))
    expected_t2 = q[0] * math.log(q[0] / 0.5) + q[1] * math.log(q[1] / 0.5)
    assert run_metric(build("kl", temperature=2.0), batch, 1)["kl/student~t1"] == pytest.approx(expected_t2, rel=1e-6)


def test_kl_direction_is_right_side_as_reference_for_every_pair(build, run_metric, make_batch):
    # kl/A~B = KL(p_B || p_A): KL(teacher || student), KL(ensemble || student), KL(t2 || t1).
    p = {"student": [0.5, 0.5], "t1": [0.9, 0.1], "t2": [0.2, 0.8]}
    batch = make_batch({role: torch.log(torch.tensor([v])) for role, v in p.items()}, torch.tensor([0]))
    result = run_metric(build("kl"), batch, 1)

    def kl(ref, other):  # KL(ref || other)
        return sum(a * math.log(a / b) for a, b in zip(ref, other))

    ensemble = torch.log(torch.tensor([p["t1"], p["t2"]])).mean(0).softmax(0).tolist()  # mean logits
    assert result["kl/student~t1"] == pytest.approx(kl(p["t1"], p["student"]), rel=1e-6)
    assert result["kl/student~t2"] == pytest.approx(kl(p["t2"], p["student"]), rel=1e-6)
    assert result["kl/student~ensemble"] == pytest.approx(kl(ensemble, p["student"]), rel=1e-6)
    assert result["kl/t1~t2"] == pytest.approx(kl(p["t2"], p["t1"]), rel=1e-6)
    assert kl(p["t2"], p["t1"]) != pytest.approx(kl(p["t1"], p["t2"]), rel=1e-3)  # the direction shows


def test_kl_is_zero_for_identical_models_and_bf16_logits_work(build, run_metric, make_batch):
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(0)).bfloat16()
    batch = make_batch({"student": logits, "t1": logits}, torch.zeros(6, dtype=torch.long), teachers=("t1",))
    assert run_metric(build("kl"), batch, 4)["kl/student~t1"] == pytest.approx(0.0, abs=1e-7)


def test_entropy_of_uniform_is_log_k(build, run_metric, make_batch):
    k = 7
    batch = make_batch(
        {"student": torch.zeros(3, k), "t1": torch.tensor([[50.0] + [0.0] * (k - 1)] * 3)},
        torch.zeros(3, dtype=torch.long),
        teachers=("t1",),
    )
    result = run_metric(build("entropy"), batch, 2)
    assert result["entropy/student"] == pytest.approx(math.log(k), rel=1e-6)
    assert result["entropy/t1"] == pytest.approx(0.0, abs=1e-12)
    assert set(result) == {"entropy/student", "entropy/t1", "entropy/ensemble"}


@pytest.mark.parametrize(
    "name, params",
    [
        ("accuracy", {}),
        ("fidelity", {}),
        ("kl", {"temperature": 3.0}),
        ("entropy", {}),
        ("mutual-information", {"per_batch_size": 8}),
        ("calibration", {}),
    ],
)
def test_whole_set_figures_do_not_depend_on_batch_size(build, run_metric, make_batch, name, params):
    g = torch.Generator().manual_seed(1)
    logits = {role: torch.randn(37, 6, generator=g) * 2 for role in ("student", "t1", "t2")}
    batch = make_batch(logits, torch.randint(0, 6, (37,), generator=g))
    metric = build(name, **params)
    reference = run_metric(metric, batch, 37)
    assert reference
    for batch_size in (1, 5, 16):
        result = run_metric(metric, batch, batch_size)
        assert result.keys() == reference.keys()
        for key, value in reference.items():
            if isinstance(value, list):  # reliability-diagram bins
                assert [b["count"] for b in result[key]] == [b["count"] for b in value]
                for got, want in zip(result[key], value):
                    for field, number in want.items():  # empty bins hold None
                        assert got[field] == (number if number is None else pytest.approx(number, rel=1e-9))
            else:
                assert result[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (key, batch_size)
