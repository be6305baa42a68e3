"""The study's decision rule and regime checks on hand-computed cases."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from kdzoo.study.arms import Arm, TeacherRow
from kdzoo.study.regime import regime_checks
from kdzoo.study.stats import combine, decide, paired_estimate, t_critical_95
from kdzoo.study.strength import Policy, affinity_scale, class_scale, parse_label, policy_labels, read_affinity


def test_t_critical_values_are_the_tabled_ones_and_conservative_between_them():
    assert t_critical_95(1) == 12.706 and t_critical_95(2) == 4.303 and t_critical_95(8) == 2.306
    assert t_critical_95(35) == 2.042  # between 30 and 40: the wider df-30 value
    assert t_critical_95(500) == 1.960
    with pytest.raises(ValueError):
        t_critical_95(0)


def test_paired_interval_by_hand():
    # differences 1, 2, 3: mean 2, sd 1, half-width t(2) / sqrt(3) = 4.303 / 1.7321 = 2.4843
    e = paired_estimate([1.0, 2.0, 3.0])
    assert e.n == 3 and e.mean == 2.0 and e.std == 1.0
    assert e.low == pytest.approx(2 - 2.48434, abs=1e-4) and e.high == pytest.approx(2 + 2.48434, abs=1e-4)
    assert e.effect_size == 2.0
    assert decide(e, +1) == "inconclusive" and decide(e, -1) == "inconclusive"
    tight = paired_estimate([0.9, 1.0, 1.1])  # sd 0.1: CI [0.7516, 1.2484]
    assert tight.low == pytest.approx(0.75157, abs=1e-4)
    assert decide(tight, +1) == "held" and decide(tight, -1) == "reversed"
    assert decide(paired_estimate([-0.9, -1.0, -1.1]), -1) == "held"


def test_one_pair_or_none_has_no_interval():
    one = paired_estimate([0.5])
    assert one.low is None and one.effect_size is None and decide(one, +1) == "inconclusive"
    assert paired_estimate([]) is None and decide(None, -1) == "inconclusive"
    assert math.isinf(paired_estimate([0.2, 0.2]).effect_size)  # no spread: the interval is the point


def test_combined_verdicts():
    assert combine(["held", "held"]) == "held"
    assert combine(["held", "inconclusive"]) == "inconclusive"
    assert combine(["held", "reversed"]) == "reversed"
    assert combine([]) == "inconclusive"


def test_labels_show_only_the_params_that_tell_policies_apart():
    weak = Policy.of({"name": "weak", "params": {"padding": 4}})
    m5 = Policy.of({"name": "randaugment", "params": {"magnitude": 5, "num_ops": 2}})
    m12 = Policy.of({"name": "randaugment", "params": {"magnitude": 12, "num_ops": 2}})
    labels = policy_labels([weak, m5, m12, m5])
    assert labels == {weak: "weak", m5: "randaugment:magnitude=5", m12: "randaugment:magnitude=12"}
    assert parse_label("randaugment:magnitude=5,num_ops=2") == ("randaugment", {"magnitude": 5, "num_ops": 2})
    assert m5.matches("randaugment", {"magnitude": 5}) and not m12.matches("randaugment", {"magnitude": 5})


def test_affinity_orders_policies_weakest_first(tmp_path):
    table = tmp_path / "affinity.csv"
    table.write_text("policy,clean_top1,augmented_top1,affinity\nweak,0.6,0.57,0.95\nrandaugment:magnitude=12,0.6,0.42,0.70\n"
                     "randaugment:magnitude=5,0.6,0.49,0.82\nstrong,0.6,0.31,0.52\n")
    weak = Policy.of({"name": "weak"})
    m5 = Policy.of({"name": "randaugment", "params": {"magnitude": 5}})
    m12 = Policy.of({"name": "randaugment", "params": {"magnitude": 12}})
    scale = affinity_scale(policy_labels([m12, weak, m5]), read_affinity(table), str(table))
    assert scale.levels == ["weak", "randaugment:magnitude=5", "randaugment:magnitude=12"]
    assert scale.affinity["randaugment:magnitude=12"] == 0.70 and scale.strongest == "randaugment:magnitude=12"
    # the two-class scale cannot tell the two RandAugments apart: both "strong"
    classes = class_scale(policy_labels([m12, weak, m5]), ("randaugment",), ("weak",))
    assert classes.levels == ["weak", "strong"] and classes.level("randaugment:magnitude=5") == "strong"


def test_a_bad_affinity_file_is_refused(tmp_path):
    bad = tmp_path / "a.csv"
    bad.write_text("name,value\nx,1\n")
    with pytest.raises(Exception, match="not an affinity table"):
        read_affinity(bad)


def baseline_arm(seed: int, gap: float, top1: float) -> Arm:
    return Arm(f"seed{seed}", Path("x"), {"seed": seed}, {"role": "model", "gap_at_best": gap, "final": {"test/top1/model": top1}}, [])


def test_regime_checks_by_hand():
    weak, strong = Policy("weak"), Policy("strong")
    scale = class_scale({weak: "weak", strong: "strong"}, ("strong",), ("weak",))
    # teacher rows as TeacherIndex.table gives them: name, role, policy label, seed, test top-1, ECE
    rows = [TeacherRow("a", "T1w", "weak", 1, 0.80, 0.02), TeacherRow("b", "T2w", "weak", 2, 0.78, 0.02),
            TeacherRow("c", "T1s", "strong", 1, 0.75, 0.02)]
    checks = regime_checks([baseline_arm(0, 0.19, 0.62), baseline_arm(1, 0.17, 0.60)], rows, scale)
    overfit, know_more, not_crippled = checks
    assert overfit.met and "0.1800 ± 0.0141 over 2 seeds" in overfit.measured
    # weakest teacher 0.75 - CE 0.61 = +0.14
    assert know_more.met and "margin +0.1400" in know_more.measured
    # mean weak 0.79 - strong 0.75 = +0.04 <= 0.05
    assert not_crippled.met and "weakest - strongest +0.0400" in not_crippled.measured
    failing = regime_checks([baseline_arm(0, 0.05, 0.74)], rows + [TeacherRow("d", "T2s", "strong", 2, 0.65, 0.0)], scale)
    assert [c.met for c in failing] == [False, False, False]
    assert [c.status for c in regime_checks([], [], scale)] == ["not measured"] * 3


def test_two_policies_in_one_class_are_not_paired_as_one():
    """RandAugment at two magnitudes is 'strong' twice on the two-class scale: the findings
    say so and ask for an affinity order instead of mixing the two strengths."""
    from kdzoo.study.arms import Group
    from kdzoo.study.findings import findings

    m5 = Policy.of({"name": "randaugment", "params": {"magnitude": 5}})
    m12 = Policy.of({"name": "randaugment", "params": {"magnitude": 12}})
    labels = policy_labels([Policy("weak"), m5, m12])
    scale = class_scale(labels, ("randaugment",), ("weak",))
    assert scale.ambiguous == ["strong (randaugment:magnitude=12, randaugment:magnitude=5)"]
    groups = [Group(label, [], [label], "weak") for label in labels.values()]
    assert all("order them by strength with --affinity" in f.verdict for f in findings(groups, scale))


def test_the_strength_plot_draws_groups_that_share_a_strength(tmp_path):
    """Two groups at one level and teacher count (two student policies) are two points."""
    from kdzoo.study.arms import Group
    from kdzoo.study.plots import plot_strength_axis

    def arm(seed, top1):
        return Arm(f"a{seed}", Path("x"), {"seed": seed}, {"role": "student", "gap_at_best": 0.1, "final": {"test/top1/student": top1}}, [])

    groups = [Group(f"{p}_{s}", [arm(0, 0.5), arm(1, 0.52)], [p], s) for p in ("weak", "strong") for s in ("weak", "strong")]
    written = plot_strength_axis(groups, lambda g: g.teacher_policies[0], ["weak", "strong"], {"weak": 0.9, "strong": 0.6}, tmp_path / "s.png")
    assert written is not None and written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_policies_missing_from_the_affinity_table_are_named(tmp_path):
    """An affinity table that covers none of the teachers' policies: the findings say which
    policies lack an affinity and how to measure them, not only that nothing was compared."""
    from kdzoo.study.arms import Group
    from kdzoo.study.findings import findings

    m5 = Policy.of({"name": "randaugment", "params": {"magnitude": 5}})
    labels = policy_labels([Policy("weak"), m5])
    scale = affinity_scale(labels, [("strong", 0.5), ("weak", 0.9)], "a.csv")
    assert scale.levels == ["weak"] and scale.unplaced == ["randaugment"]
    groups = [Group(label, [], [label], "weak") for label in labels.values()]
    verdict = findings(groups, scale)[0].verdict
    assert verdict.startswith("not measured") and "no affinity for randaugment" in verdict and "kdzoo affinity" in verdict
