"""One tie rule for every metric: the predicted class is the first maximal logit (the
lowest class index among tied maxima), and top-k lists start with that class.

The expected figures below use ``Tensor.argmax`` directly (documented to return the
first maximal index), so they do not depend on the module under test.
"""

import pytest
import torch

from kdzoo.api import role_logits, role_pairs

ROLES = ("student", "t1", "t2")


def integer_logits(seed: int) -> dict[str, torch.Tensor]:
    """Logits in {0, 1, 2} over 10 classes: most rows have tied maxima."""
    g = torch.Generator().manual_seed(seed)
    return {role: torch.randint(0, 3, (1000, 10), generator=g).float() for role in ROLES}


def bf16_logits(seed: int) -> dict[str, torch.Tensor]:
    """Logits rounded to bf16 (as bf16 autocast hands them over): ties in a few rows."""
    g = torch.Generator().manual_seed(seed)
    return {role: (torch.randn(1000, 10, generator=g) * 4).bfloat16() for role in ROLES}


LOGITS = {"integer": integer_logits, "bf16": bf16_logits}


@pytest.fixture(params=sorted(LOGITS))
def tied_batch(request, make_batch):
    logits = LOGITS[request.param](0)
    # Targets: the student's first maximal class on the first half (so a different tie
    # rule shows as a miss), random classes on the second half.
    first = logits["student"].float().argmax(dim=1)
    targets = torch.cat([first[:500], torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(1))])
    return make_batch(logits, targets)


def first_max(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().argmax(dim=1)


def test_the_fixture_has_ties(tied_batch):
    logits = tied_batch.logits["student"].float()
    tied = (logits == logits.max(dim=1, keepdim=True).values).sum(dim=1) > 1
    assert tied.sum() >= 1


def test_top1_accuracy_is_the_share_of_first_maximal_classes_on_target(build, run_metric, tied_batch):
    result = run_metric(build("accuracy", topk=[1, 5]), tied_batch, batch_size=128)
    for role, logits in role_logits(tied_batch).items():
        expected = (first_max(logits) == tied_batch.targets).double().mean().item()
        assert result[f"top1/{role}"] == pytest.approx(expected, abs=1e-12), role
        assert result[f"top5/{role}"] >= result[f"top1/{role}"]


def test_fidelity_is_agreement_of_first_maximal_classes(build, run_metric, tied_batch):
    result = run_metric(build("fidelity"), tied_batch, batch_size=128)
    logits = role_logits(tied_batch)
    for left, right in role_pairs(tied_batch):
        expected = (first_max(logits[left]) == first_max(logits[right])).double().mean().item()
        assert result[f"fidelity/{left}~{right}"] == pytest.approx(expected, abs=1e-12)


def test_accuracy_against_a_teachers_predictions_equals_fidelity(build, run_metric, make_batch):
    # Scoring the student against t1's predicted labels is the student~t1 fidelity: one rule.
    logits = integer_logits(2)
    batch = make_batch(logits, first_max(logits["t1"]))
    top1 = run_metric(build("accuracy", topk=[1]), batch, batch_size=100)["top1/student"]
    fidelity = run_metric(build("fidelity"), batch, batch_size=100)["fidelity/student~t1"]
    assert top1 == pytest.approx(fidelity, abs=1e-12)
    assert run_metric(build("accuracy", topk=[1]), batch, batch_size=100)["top1/t1"] == 1.0


def test_calibration_counts_the_same_hits_as_accuracy(build, run_metric, tied_batch):
    accuracy = run_metric(build("accuracy", topk=[1]), tied_batch, batch_size=128)
    calibration = run_metric(build("calibration", bins=[10]), tied_batch, batch_size=128)
    size = len(tied_batch.targets)
    for role in role_logits(tied_batch):
        hits = sum(b["accuracy"] * b["count"] for b in calibration[f"reliability10/{role}"] if b["count"])
        assert hits / size == pytest.approx(accuracy[f"top1/{role}"], abs=1e-9), role


def test_label_mi_uses_the_first_maximal_class(build, run_metric, make_batch):
    # With targets equal to the first maximal class, label MI is the targets' own entropy.
    logits = integer_logits(3)
    targets = first_max(logits["student"])
    batch = make_batch(logits, targets)
    result = run_metric(build("mutual-information"), batch, batch_size=100)
    p = torch.bincount(targets, minlength=10).double() / len(targets)
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    assert result["label_mi/student"] == pytest.approx(entropy, rel=1e-9)


# --------------------------------------------------------------------------- the module
def test_predicted_class_is_the_lowest_index_among_tied_maxima():
    from kdzoo_metrics.predictions import predicted_class

    logits = torch.tensor([[1.0, 3, 3, 0], [2, 2, 2, 2], [0, 0, 0, 5]])
    assert predicted_class(logits).tolist() == [1, 0, 3]
    assert predicted_class(logits.bfloat16()).tolist() == [1, 0, 3]


@pytest.mark.parametrize("kind", sorted(LOGITS))
def test_top_classes_start_with_the_predicted_class_and_break_ties_by_index(kind):
    from kdzoo_metrics.predictions import predicted_class, top_classes

    logits = LOGITS[kind](4)["student"].float()
    ranked = top_classes(logits, 5)
    assert ranked.shape == (1000, 5)
    assert torch.equal(ranked[:, 0], predicted_class(logits))
    values = logits.gather(1, ranked)
    assert bool((values[:, :-1] >= values[:, 1:]).all())  # descending
    tied = values[:, :-1] == values[:, 1:]
    assert bool((ranked[:, :-1][tied] < ranked[:, 1:][tied]).all())  # equal values: lower index first
    assert top_classes(torch.tensor([[1.0, 3, 3, 0, 3]]), 3).tolist() == [[1, 2, 4]]
    assert top_classes(logits, 1).equal(predicted_class(logits)[:, None])
