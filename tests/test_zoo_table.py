"""examples/zoo_table.py: the zoo's aggregation (per method over seeds), the published
targets it reads from the recipes, and the rank correlation it compares orderings with."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def zoo_table():
    spec = importlib.util.spec_from_file_location("zoo_table", ROOT / "examples" / "zoo_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_published_targets_are_the_recipes_resnet32x4_to_resnet8x4_numbers(zoo_table):
    assert zoo_table.published_target("kd") == 73.33  # mdistiller README
    assert zoo_table.published_target("crd") == 75.51  # CRD paper Table 1
    assert zoo_table.published_target("ctkd") is None  # its number is for ResNet-56 -> ResNet-20
    assert zoo_table.published_target("normkd") is None  # "Target: none verified"
    assert zoo_table.published_target("no-such-method") is None


def test_spearman_matches_hand_computed_ranks(zoo_table):
    assert zoo_table.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert zoo_table.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks (1, 2, 3) and (1, 3, 2): d = (0, 1, 1), rho = 1 - 6 * 2 / (3 * 8) = 0.5
    assert zoo_table.spearman([0.1, 0.2, 0.3], [5.0, 9.0, 7.0]) == pytest.approx(0.5)
    # a tie shares its mean rank: x ranks (1.5, 1.5, 3) against (1, 2, 3)
    assert zoo_table.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(0.8660254, rel=1e-6)


def test_arms_group_by_method_and_seed(zoo_table):
    results = {"kd_seed0": ({"a": 1}, {}), "kd_seed1": ({"a": 2}, {}), "dist-plus_seed1": ({"a": 3}, {})}
    grouped = zoo_table.by_method(results)
    assert list(grouped) == ["kd", "dist-plus"] and sorted(grouped["kd"]) == [0, 1]
    assert zoo_table.mean_std([0.5, 0.7], 2) == "0.60 ± 0.14"
