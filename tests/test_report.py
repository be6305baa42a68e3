"""`kdzoo report` on a tiny grid run through the CLI: grouping by seed, the numbers against
the arms' own summaries, findings, plots; and the findings logic on hand-made numbers."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kdzoo.cli import cli
from kdzoo.study.report import Arm, Group, findings, load_arms

MODEL = {"name": "cifar-resnet", "params": {"depth": 8, "width": 4}}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def teacher(name: str) -> dict:
    return {"name": name, "train": {"model": MODEL, "epochs": 1}}


GRID = {
    "kind": "distill",
    "name": "study",
    "epochs": 1,
    "batch_size": 32,
    "precision": "fp32",
    "threads": 1,
    "data": {"name": "synthetic-shapes", "params": {"train_size": 96, "test_size": 48, "num_classes": 4}},
    "student": {"model": MODEL},
    "teachers": [teacher("t1"), teacher("t2")],
    "metrics": ["accuracy", "fidelity", "mutual-information", "calibration", "attention-iou"],
    "eval": {"splits": ["train", "test", "test_aug"]},
    # The teachers' policies (weak or strong each) and the seed: 4 arm groups of 2 seeds.
    "matrix": {"teachers.0.train.augmentation": ["weak", "strong"], "teachers.1.train.augmentation": ["weak", "strong"], "seed": [0, 1]},
}
GROUPS = ["strong_strong", "strong_weak", "weak_strong", "weak_weak"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    spec = root / "study.yaml"
    spec.write_text(yaml.safe_dump({**GRID, "output_dir": str(root / "runs")}, sort_keys=False))
    result = CliRunner().invoke(cli, ["run", str(spec), "--out", str(root / "grid"), "--quiet"])
    assert result.exit_code == 0, result.output
    return root / "grid"


@pytest.fixture(scope="module")
def reported(grid) -> tuple[Path, str]:
    out = grid.parent / "report"
    result = CliRunner().invoke(cli, ["report", str(grid), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def summaries(grid: Path, group: str) -> list[dict]:
    return [json.loads((grid / "arms" / f"{group}_seed{seed}" / "summary.json").read_text()) for seed in (0, 1)]


def by_hand(values: list[float]) -> tuple[float, float]:
    a, b = values
    return (a + b) / 2, abs(a - b) / math.sqrt(2)  # sample std of two values


def test_table_means_and_stds_equal_those_of_the_arms(grid, reported):
    out, _ = reported
    rows = {row["group"]: row for row in csv.DictReader((out / "study.csv").open())}
    assert sorted(rows) == GROUPS
    for group in GROUPS:
        row = rows[group]
        assert row["seeds"] == "2" and row["seed_list"] == "0 1" and row["n_teachers"] == "2"
        assert row["teacher_policies"] == group.replace("_", "+") and row["student_policy"] == "weak"
        arms = summaries(grid, group)
        finals = [s["final"] for s in arms]
        expected = {
            "test_top1": [f["test/top1/student"] for f in finals],
            "gap_at_best": [s["gap_at_best"] for s in arms],
            "fidelity_student_ensemble": [f["test/fidelity/student~ensemble"] for f in finals],
            "fidelity_student_ensemble_test_aug": [f["test_aug/fidelity/student~ensemble"] for f in finals],
            "fidelity_student_teacher": [(f["test/fidelity/student~t1"] + f["test/fidelity/student~t2"]) / 2 for f in finals],
            "mi_student_ensemble": [f["test/mi/student~ensemble"] for f in finals],
            "ece10_student": [f["test/ece10/student"] for f in finals],
            "attn_iou_teacher_teacher": [f["test/attn_iou/t1~t2"] for f in finals],
        }
        for key, values in expected.items():
            mean, std = by_hand(values)
            assert float(row[f"{key}_mean"]) == pytest.approx(mean, abs=1e-12), key
            assert float(row[f"{key}_std"]) == pytest.approx(std, abs=1e-12), key
        # train top-1 at the best epoch comes from metrics.jsonl
        records = [json.loads((grid / "arms" / f"{group}_seed{s}" / "metrics.jsonl").read_text().splitlines()[-1]) for s in (0, 1)]
        assert float(row["train_top1_at_best_mean"]) == pytest.approx(statistics.fmean(r["train/top1/student"] for r in records))
        # no KL or entropy metric in this grid: blank, not zero
        assert row["kl_student_ensemble_mean"] == "" and row["entropy_student_std"] == ""


def test_markdown_table_findings_and_plots(grid, reported):
    out, output = reported
    md = (out / "study.md").read_text()
    mean, std = by_hand([s["final"]["test/top1/student"] for s in summaries(grid, "weak_weak")])
    weak_row = next(line for line in output.splitlines() if line.startswith("| weak_weak "))
    assert f"{mean:.4f} ± {std:.4f}" in weak_row and weak_row.rstrip(" |").endswith("2")  # seeds column
    header_row = weak_row.join(md.split(weak_row)[:1])
    assert weak_row in md and "KL(ens ‖ s)" in header_row and "ECE s (10 bins, weighted)" in header_row  # the header row
    # findings: computed, one per STUDY.md finding; one teacher count only, so finding 4 is not measured
    for number in (1, 2, 3, 4):
        assert f"\n{number}. " in "\n" + output
    assert "4. The effect grows" in output and "**not measured**" in output.split("4. The effect grows")[1]
    assert "attn IoU T~T: strong " in output and "(2 arms, 2 seeds)" in output
    # teachers table: 8 cached teachers (2 roles x 2 policies x 2 seeds)
    teachers = md.split("## Teachers")[1].split("##")[0]
    assert sum(line.startswith(("| t1-", "| t2-")) for line in teachers.splitlines()) == 8
    teacher_dir = Path(summaries(grid, "weak_weak")[0]["teachers"]["t1"]["checkpoint"])
    own_top1 = json.loads((teacher_dir / "summary.json").read_text())["final"]["test/top1/model"]
    assert any(teacher_dir.name in line and f"{own_top1:.4f}" in line for line in teachers.splitlines())
    for name in ("accuracy_vs_fidelity.png", "attention_iou_vs_gap.png", "reliability.png", *(f"overlays/{g}.png" for g in GROUPS)):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
        assert f"]({name})" in md


def test_overlays_come_from_the_final_evaluation(grid):
    final = summaries(grid, "weak_weak")[0]["final"]
    images = final["test/attn_overlay_images"]
    assert len(images) == 8 and len(images[0]) == 3 and len(images[0][0]) == 32
    for role in ("student", "t1", "t2"):
        maps = final[f"test/attn_overlay/{role}"]
        assert len(maps) == 8 and len(maps[0]) == 32 and all(0.0 <= v <= 1.0 for row in maps[0] for v in row)


def test_report_on_one_run_dir(grid, tmp_path):
    result = CliRunner().invoke(cli, ["report", str(grid / "arms" / "weak_weak_seed1"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (row,) = csv.DictReader((tmp_path / "study.csv").open())
    own = summaries(grid, "weak_weak")[1]["final"]
    assert row["group"] == "weak_weak" and row["seeds"] == "1"
    assert float(row["test_top1_mean"]) == own["test/top1/student"] and row["test_top1_std"] == ""
    assert "**not measured**" in result.output  # weak teachers only: nothing to compare with


def test_report_refuses_a_directory_without_runs(tmp_path):
    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "neither a grid directory" in result.output


# ----------------------------------------------------------------------------- findings logic
def fake_arm(name: str, seed: int, policies: list[str], **values: float) -> Arm:
    """An arm whose summary holds exactly the given test figures."""
    roles = [f"t{i + 1}" for i in range(len(policies))]
    final = {
        "test/top1/student": values["top1"],
        "test/fidelity/student~ensemble": values["fidelity"],
        "test/mi/student~ensemble": values["mi"],
        **{f"test/fidelity/student~{r}": values["fidelity"] for r in roles},
    }
    if len(roles) == 2:
        final["test/attn_iou/t1~t2"] = values["iou"]
    summary = {"role": "student", "final": final, "gap_at_best": values["gap"], "teachers": {r: {"checkpoint": ""} for r in roles}}
    return Arm(name, Path(name), {"seed": seed}, summary, [])


def fake_groups(strong_shift: float, seeds=(0, 1)) -> list[Group]:
    """Weak and strong groups with 1 and 2 teachers; strong arms move by strong_shift * (n teachers)."""
    groups = []
    for policy in ("weak", "strong"):
        for n in (1, 2):
            shift = strong_shift * n if policy == "strong" else 0.0
            arms = [
                fake_arm(f"{policy}{n}_seed{s}", s, [policy] * n, top1=0.5 + shift / 2 + 0.01 * s, fidelity=0.8 - shift + 0.01 * s,
                         mi=1.0 - shift + 0.01 * s, gap=0.2 - shift + 0.01 * s, iou=0.6 - shift + 0.01 * s)
                for s in seeds
            ]
            groups.append(Group(f"{policy}{n}", arms, [policy] * n, "weak"))
    return groups


def test_findings_held_when_strong_ensembles_are_more_diverse():
    verdicts = {f.number: f.verdict for f in findings(fake_groups(0.1))}
    assert verdicts == {1: "held", 2: "held", 3: "held", 4: "held"}


def test_findings_did_not_hold_in_the_opposite_direction():
    verdicts = {f.number: f.verdict for f in findings(fake_groups(-0.1))}
    assert verdicts == {1: "did not hold", 2: "did not hold", 3: "did not hold", 4: "did not hold"}


def test_findings_need_two_seeds_and_data():
    one_seed = findings(fake_groups(0.1, seeds=(0,)))
    assert all(f.verdict.startswith("not called: fewer than two seeds") for f in one_seed)
    only_weak = [g for g in fake_groups(0.1) if g.label.startswith("weak")]
    assert {f.verdict for f in findings(only_weak)} == {"not measured"}
    first = findings(fake_groups(0.1))[0]
    assert "strong 0.4050 ± 0.0071 (2 arms, 2 seeds) vs weak 0.6050 ± 0.0071 (2 arms, 2 seeds)" in first.lines[0]


def test_load_arms_skips_unfinished_arms(grid, tmp_path):
    crashed = grid / "arms" / "crashed"
    crashed.mkdir()
    try:
        notes = []
        arms = load_arms(grid, notes.append)
    finally:
        crashed.rmdir()
    assert len(arms) == 8 and notes == ["skipped crashed: not finished (no summary.json)"]


def test_findings_use_matched_pairs_when_available():
    """Pairs (same teacher count, student policy, seed) decide the verdict and are reported."""
    first = findings(fake_groups(0.1))[0]
    assert "matched pairs strong - weak: -0.2000 ± 0.0000 over 2 pairs, 2/2 with strong < weak" in first.lines[0]
    fourth = findings(fake_groups(0.1))[3]
    assert fourth.lines[0].startswith("1 teachers: fidelity s~ens weak - strong = 0.1000")


def test_a_report_killed_at_any_write_leaves_whole_files_and_reruns_to_the_same_result(grid, reported, tmp_path, monkeypatch):
    """Every file of the report (CSV, Markdown, PNG) is renamed into place: a kill at the
    N-th rename leaves only complete files, and running the report again gives the same."""
    import os

    from kdzoo.run import checkpoint

    reference, _ = reported
    expected = {p.relative_to(reference): p.read_bytes() for p in reference.rglob("*") if p.is_file() and p.suffix != ".png"}

    class Killed(BaseException):
        pass

    real = os.replace
    for fail_at in range(3):  # study.csv, the first plot, ... : each a different file
        out = tmp_path / f"report-{fail_at}"
        calls = {"n": 0}

        def replace(src, dst, fail_at=fail_at):
            calls["n"] += 1
            if calls["n"] - 1 == fail_at:
                raise Killed(dst)
            return real(src, dst)

        with monkeypatch.context() as m:
            m.setattr(checkpoint.os, "replace", replace)
            with pytest.raises(Killed):
                CliRunner().invoke(cli, ["report", str(grid), "--out", str(out)], catch_exceptions=False)
        assert not [p for p in out.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
        assert CliRunner().invoke(cli, ["report", str(grid), "--out", str(out)]).exit_code == 0
        got = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix != ".png"}
        assert {k: v.replace(str(out).encode(), str(reference).encode()) for k, v in got.items()} == expected
