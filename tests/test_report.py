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
from kdzoo.study.report import STRONG_POLICIES, WEAK_POLICIES, Arm, Group, findings, load_arms
from kdzoo.study.strength import Policy, affinity_scale, class_scale

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
    assert "4. The effect grows" in output and "**not measured: one teacher count**" in output.split("4. The effect grows")[1]
    # finding 1 pairs the two seeds' (t1, t2) teacher pairs; the others the 2 seeds' students
    assert "attn IoU T~T (per teacher pair), strong - weak: " in output and "over 2 pairs" in output
    assert "Decision rule (paired t, 95% over matched pairs)" in md
    # teachers table: 8 cached teachers (2 roles x 2 policies x 2 seeds)
    teachers = md.split("## Teachers")[1].split("##")[0]
    assert sum(line.startswith(("| t1-", "| t2-")) for line in teachers.splitlines()) == 8
    teacher_dir = Path(summaries(grid, "weak_weak")[0]["teachers"]["t1"]["checkpoint"])
    own_top1 = json.loads((teacher_dir / "summary.json").read_text())["final"]["test/top1/model"]
    assert any(teacher_dir.name in line and f"{own_top1:.4f}" in line for line in teachers.splitlines())
    for name in ("accuracy_vs_fidelity.png", "attention_iou_vs_gap.png", "strength_axis.png", "reliability.png", *(f"overlays/{g}.png" for g in GROUPS)):
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
    assert "**not measured: needs arms" in result.output  # weak teachers only: nothing to compare with


def test_report_with_an_affinity_table_and_a_baseline(grid, tmp_path):
    """--affinity orders the policies (strong has the lower affinity: the strongest);
    --baseline feeds the regime checks, here with one arm standing in for a CE-only run."""
    table = tmp_path / "affinity.csv"
    table.write_text("policy,clean_top1,augmented_top1,affinity\nweak,0.5,0.45,0.9\nstrong,0.5,0.3,0.6\n")
    baseline = grid / "arms" / "weak_weak_seed0"
    result = CliRunner().invoke(cli, ["report", str(grid), "--out", str(tmp_path / "r"), "--affinity", str(table), "--baseline", str(baseline)])
    assert result.exit_code == 0, result.output
    own = summaries(grid, "weak_weak")[0]
    assert f"{own['gap_at_best']:.4f} over 1 seeds" in result.output  # the baseline's gap, read from its summary
    assert f"strength axis (affinity ({table})):" in result.output
    assert "| weak           | 0.9000" in result.output and "| strong         | 0.6000" in result.output
    md = (tmp_path / "r" / "study.md").read_text()
    assert "## Regime checks" in md and "## Strength axis" in md
    bad = tmp_path / "bad.csv"
    bad.write_text("policy,x\nweak,1\n")
    refused = CliRunner().invoke(cli, ["report", str(grid), "--out", str(tmp_path / "r2"), "--affinity", str(bad)])
    assert refused.exit_code == 2 and "not an affinity table" in refused.output and not (tmp_path / "r2").exists()


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


def teacher_seed(arm: Arm, role: str) -> int:
    """As `kdzoo run` seeds inline teachers: the run's seed moves them (distinct pairs per seed)."""
    return arm.seed * 1000 + int(role[1:])


NOISE = {0: 0.0, 1: 0.004, 2: -0.003}  # per seed, on the strong side only: differences with a spread


def fake_groups(strong_shift: float, seeds=(0, 1, 2), levels=("weak", "strong"), noise=NOISE) -> list[Group]:
    """Groups at each level with 1 and 2 teachers; level k of K moves by strong_shift * n * k/(K-1)."""
    groups = []
    for rank, policy in enumerate(levels):
        for n in (1, 2):
            shift = strong_shift * n * rank / (len(levels) - 1)
            arms = [
                fake_arm(f"{policy}{n}_seed{s}", s, [policy] * n, top1=0.5 + shift / 2 + 0.01 * s + (noise[s] if rank else 0),
                         fidelity=0.8 - shift + 0.01 * s + (noise[s] if rank else 0), mi=1.0 - shift + 0.01 * s,
                         gap=0.2 - shift + 0.01 * s + (noise[s] if rank else 0), iou=0.6 - shift + 0.01 * s + (noise[s] if rank else 0))
                for s in seeds
            ]
            groups.append(Group(f"{policy}{n}", arms, [policy] * n, "weak"))
    return groups


def two_classes(groups):
    return class_scale({Policy(p): p for g in groups for p in g.teacher_policies}, STRONG_POLICIES, WEAK_POLICIES)


def verdicts(groups, scale=None) -> dict[int, str]:
    return {f.number: f.verdict for f in findings(groups, scale or two_classes(groups), teacher_seed)}


def test_findings_held_when_strong_ensembles_are_more_diverse():
    assert verdicts(fake_groups(0.1)) == {1: "held", 2: "held", 3: "held", 4: "held"}


def test_findings_reversed_in_the_opposite_direction():
    assert verdicts(fake_groups(-0.1)) == {1: "reversed", 2: "reversed", 3: "reversed", 4: "reversed"}


def test_findings_inconclusive_when_the_interval_straddles_zero():
    noisy = {0: 0.05, 1: -0.05, 2: 0.01}  # differences of both signs around a shift of 0
    assert set(verdicts(fake_groups(0.0, noise=noisy)).values()) == {"inconclusive"}
    # one seed: one pair per comparison, no interval
    assert set(verdicts(fake_groups(0.1, seeds=(0,))).values()) == {"inconclusive"}


def test_findings_need_two_strengths():
    only_weak = [g for g in fake_groups(0.1) if g.label.startswith("weak")]
    assert all(v.startswith("not measured") for v in verdicts(only_weak).values())


def test_finding_values_are_matched_pair_differences_with_their_t_interval():
    """Finding 2's fidelity: strong - weak per (count, student policy, seed) = -0.1 n + noise."""
    second = findings(fake_groups(0.1), two_classes(fake_groups(0.1)), teacher_seed)[1]
    diffs = [-0.1 * n + NOISE[s] for n in (1, 2) for s in (0, 1, 2)]
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = 2.571 * sd / math.sqrt(6)  # t(0.975, 5)
    assert f"{mean:+.4f}, 95% CI [{mean - half:+.4f}, {mean + half:+.4f}], d_z {mean / sd:+.2f} over 6 pairs" in second.lines[0]
    # finding 1 pairs teacher pairs, not students: one (t1, t2) pair per seed
    first = findings(fake_groups(0.1), two_classes(fake_groups(0.1)), teacher_seed)[0]
    assert "over 3 pairs" in first.lines[0]
    # finding 4: the drop at 2 teachers minus the drop at 1, per seed: 0.1 exactly
    fourth = findings(fake_groups(0.1), two_classes(fake_groups(0.1)), teacher_seed)[3]
    assert "drop at 2 - drop at 1 teachers: +0.1000" in fourth.lines[-1] and "increase monotonically" in fourth.lines[-1]


def test_a_strength_axis_decides_on_its_ends_and_reports_the_middle():
    levels = ("weak", "mid", "strong")
    groups = fake_groups(0.1, levels=levels)
    scale = affinity_scale({Policy(p): p for p in levels}, [("strong", 0.5), ("weak", 0.9), ("mid", 0.7)], "test")
    assert scale.levels == ["weak", "mid", "strong"] and scale.strongest == "strong"
    second = findings(groups, scale, teacher_seed)[1]
    assert second.verdict == "held" and "strong - weak: -0.1497" in second.lines[0] and "; mid - weak: -0.0747" in second.lines[0]


def test_load_arms_skips_unfinished_arms(grid, tmp_path):
    crashed = grid / "arms" / "crashed"
    crashed.mkdir()
    try:
        notes = []
        arms = load_arms(grid, notes.append)
    finally:
        crashed.rmdir()
    assert len(arms) == 8 and notes == ["skipped crashed: not finished (no summary.json)"]


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


def test_a_part_of_the_grid_leaves_the_study_report_to_the_whole_grid(grid):
    spec = grid.parent / "study.yaml"
    part = CliRunner().invoke(cli, ["run", str(spec), "--out", str(grid), "--arms", "weak_weak_*", "--quiet"])
    assert part.exit_code == 0, part.output
    assert "already finished, skipped" in part.output and "study report:" not in part.output
    whole = CliRunner().invoke(cli, ["run", str(spec), "--out", str(grid), "--quiet"])
    assert whole.exit_code == 0 and "study report:" in whole.output, whole.output
