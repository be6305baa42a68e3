"""Stages of a distill run (``stages:``; kdzoo/spec/stages.py, kdzoo/run/stages.py): what the
spec refuses, a two-stage run whose stage-1 weights show in metrics.jsonl, what a loss sees of
its stage, a frozen student, and a staged run killed at any write (in stage 1, at the stage
boundary, in stage 2) resuming bit for bit."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from kdzoo import rundir
from kdzoo.cli import cli
from kdzoo.errors import SpecError
from kdzoo.host.build import build_model
from kdzoo.run.checkpoint import load_tensors
from kdzoo.run.state import state_meta
from kdzoo.spec import validate_spec
from tests.conftest import TINY_DATA, TINY_MODEL
from tests.test_crash_safety import Faults, Killed, outcome, run_to_end, same

TWO_STAGES = [
    {"name": "warm", "epochs": 1, "weights": {"kd": 0}, "optimizer": {"lr": 0.01}, "schedule": {"name": "constant"}},
    {"name": "main", "epochs": 2},
]

# A loss whose value says where its step is: 100 in stage "second", + 10 x the epoch within
# the stage, + the stage's epochs (the epoch mean of a constant is the constant).
PROBE = textwrap.dedent('''
    from kdzoo import hookimpl
    from kdzoo.api import Loss

    class Probe(Loss):
        uses_teachers = False
        stages = ("first", "second")

        def pair(self, student, teacher, batch, index):
            where = 100.0 * (batch.stage == "second") + 10.0 * batch.epoch + batch.epochs
            return student.logits.float().mean() * 0.0 + where

    @hookimpl
    def register_losses(register):
        register("probe", Probe, description="reports the stage, epoch and epochs its steps see")
''')


def staged(tmp_path: Path, **fields) -> dict:
    spec = {
        "kind": "distill", "name": "staged", "epochs": 3, "batch_size": 32, "precision": "fp32", "threads": 1,
        "data": TINY_DATA, "student": {"model": TINY_MODEL},
        "teachers": [{"name": "t1", "train": {"model": TINY_MODEL, "epochs": 1}}],
        "losses": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5}],
        "optimizer": {"name": "sgd", "lr": 0.1, "nesterov": False}, "schedule": {"name": "cosine"},
        "metrics": ["accuracy"], "stages": TWO_STAGES, "output_dir": str(tmp_path / "runs"),
    }
    return {**spec, **fields}


def problems(spec: dict, host) -> list[str]:
    with pytest.raises(SpecError) as caught:
        validate_spec(spec, host.registry)
    return caught.value.problems


def write(spec: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / rundir.METRICS_FILE).read_text().splitlines()]


# ----------------------------------------------------------------------------- the spec
def test_stages_validate_inherit_the_run_optimizer_and_round_trip(tmp_path, host):
    spec = validate_spec(staged(tmp_path), host.registry)
    warm, main = spec.stages
    # A stage's optimizer and schedule: the run's fields, then the stage's.
    assert (warm.optimizer.lr, warm.optimizer.momentum, warm.optimizer.nesterov) == (0.01, 0.9, False)
    assert warm.schedule.name == "constant" and main.optimizer is None and main.schedule is None
    other = validate_spec(staged(tmp_path, stages=[{**TWO_STAGES[0], "optimizer": {"name": "adamw"}}, TWO_STAGES[1]]), host.registry)
    assert other.stages[0].optimizer.name == "adamw" and other.stages[0].optimizer.lr == 0.1  # adamw's own defaults, not sgd's fields
    dumped = spec.model_dump(mode="json")
    assert validate_spec(yaml.safe_load(yaml.safe_dump(dumped)), host.registry).model_dump(mode="json") == dumped
    # Without stages the resolved spec has no `stages` key: resolved specs, cache keys and grid skips stay as they were.
    assert "stages" not in validate_spec({**staged(tmp_path), "stages": []}, host.registry).model_dump(mode="json")


def test_bad_stages_are_refused_with_their_field_paths(tmp_path, host):
    found = problems(staged(tmp_path, stages=[
        {"name": "warm", "epochs": 1, "weights": {"kdd": 0}},
        {"name": "warm", "epochs": 1, "weights": {"ce": 0, "kd": 0}},
    ]), host)
    assert "stages: the stages' epochs add up to 2, the run's epochs are 3: they must be equal (each stage takes its slice of the run) (got [1, 1])" in found
    assert any(p.startswith("stages.0.weights.kdd: no loss term 'kdd' in losses (did you mean 'kd'?); terms: ce, kd") for p in found), found
    assert any(p.startswith("stages.1.name: a second stage named 'warm'") for p in found), found
    assert any(p.startswith("stages.1.weights: every term has weight 0 in this stage") for p in found), found
    assert len(found) == 4, found
    twice = staged(tmp_path, losses=[{"name": "kd"}, {"name": "kd", "params": {"temperature": 2}}],
                   stages=[{"name": "a", "epochs": 1, "weights": {"kd": 0}}, {"name": "b", "epochs": 2}])
    assert problems(twice, host)[0].startswith("stages.0.weights.kd: 2 terms of losses are named 'kd'")
    assert problems(staged(tmp_path, stages=[{"name": "Bad name", "epochs": 3}]), host)[0].startswith("stages.0.name: String should match pattern")
    assert problems(staged(tmp_path, stages=[{"name": "a", "epochs": 3, "weights": {"kd": -1}}]), host)[0].startswith("stages.0.weights.kd: Input should be greater than or equal to 0")


def test_a_loss_that_declares_its_stages_refuses_other_stage_names(tmp_path, host, write_spec):
    ft = staged(tmp_path, losses=[{"name": "ce"}, {"name": "ft"}],
                stages=[{"name": "paraphrase", "epochs": 1, "student": "frozen", "weights": {"ce": 0}}, {"name": "transfer", "epochs": 2}])
    result = CliRunner().invoke(cli, ["validate", str(write_spec(ft))])
    assert result.exit_code == 2, result.output
    assert ("stages.0.name: loss 'ft' does not know a stage 'paraphrase' (did you mean 'paraphraser'?); allowed: "
            "paraphraser, transfer") in result.output
    assert "(got \"paraphrase\")" in result.output
    # Where such a loss has weight 0 it takes no part, and any name goes.
    validate_spec({**ft, "stages": [{"name": "warmup", "epochs": 1, "weights": {"ft": 0}}, {"name": "transfer", "epochs": 2}]}, host.registry)
    # The declared names (a misspelt one would silently run the loss's ordinary behaviour otherwise).
    assert "stages.0.name: loss 'ab' does not know a stage 'initial'" in problems(
        staged(tmp_path, losses=[{"name": "ce"}, {"name": "ab"}], stages=[{"name": "initial", "epochs": 3}]), host)[0]


def test_a_dot_stage_needs_both_kinds_of_terms(tmp_path, host):
    spec = staged(tmp_path, optimizer={"name": "dot", "lr": 0.1},
                  stages=[{"name": "warm", "epochs": 1, "weights": {"kd": 0}}, {"name": "main", "epochs": 2}])
    assert problems(spec, host) == [
        "stages.0.weights: optimizer dot needs both kinds of terms; this stage computes no distillation term (got {\"kd\": 0.0})"
    ]
    spec["stages"][0]["optimizer"] = {"name": "sgd"}  # a stage of its own optimizer is not DOT's
    validate_spec(spec, host.registry)


# ----------------------------------------------------------------------------- runs
def test_two_stages_train_with_their_own_weights_and_schedules(tmp_path):
    spec_path = write(staged(tmp_path), tmp_path / "spec.yaml")
    result = CliRunner().invoke(cli, ["run", str(spec_path), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    warm, first, second = records(tmp_path / "out")
    assert [r["stage"] for r in (warm, first, second)] == ["warm", "main", "main"]
    # Stage 1: kd has weight 0, so it is not computed (no figure) and the total is 0.5 CE.
    assert "loss/kd" not in warm and warm["loss"] == pytest.approx(0.5 * warm["loss/ce"], rel=1e-6)
    for record in (first, second):
        assert record["loss"] == pytest.approx(0.5 * record["loss/ce"] + 0.5 * record["loss/kd"], rel=1e-5)
    # Stage 1's constant lr 0.01; stage 2's cosine from 0.1 over its own 2 x 3 steps (its epoch 1 ends at step 2 of 6).
    assert warm["lr"] == 0.01
    assert first["lr"] == pytest.approx(0.1 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi / 3)).item()))
    meta = state_meta(tmp_path / "out")
    assert meta["stage"] == {"index": 1, "name": "main", "epoch": 2} and meta["epoch"] == 3


def test_a_loss_sees_its_stage_and_counts_within_it(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    spec = staged(tmp_path, losses=[{"name": "ce"}, {"name": "probe"}], plugins=[str(tmp_path / "probe.py")],
                  stages=[{"name": "first", "epochs": 1}, {"name": "second", "epochs": 2}])
    result = CliRunner().invoke(cli, ["run", str(write(spec, tmp_path / "spec.yaml")), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    # first: epoch 0 of 1 -> 1; second: epochs 0 and 1 of 2 -> 102, 112
    assert [r["loss/probe"] for r in records(tmp_path / "out")] == [1.0, 102.0, 112.0]


def test_a_frozen_student_keeps_its_weights_and_statistics(tmp_path, host):
    spec = staged(tmp_path, epochs=1, losses=[{"name": "ce"}, {"name": "fitnet", "weight": 1.0}],
                  stages=[{"name": "connectors", "epochs": 1, "student": "frozen"}])
    result = CliRunner().invoke(cli, ["run", str(write(spec, tmp_path / "spec.yaml")), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / rundir.MANIFEST_FILE).read_text())
    torch.manual_seed(0)  # the student's initialisation (the spec's seed), as the run builds it
    initial = build_model(host.registry, TINY_MODEL["name"], TINY_MODEL["params"], num_classes=4, image_size=manifest["image_size"])
    saved = load_tensors(tmp_path / "out" / rundir.MODEL_FILE)
    body = {k[len(rundir.BODY_PREFIX):]: v for k, v in saved.items() if k.startswith(rundir.BODY_PREFIX)}
    assert body.keys() == initial.body.state_dict().keys()
    assert all(torch.equal(body[k], p) for k, p in initial.body.named_parameters())  # CE was computed, not trained
    # BatchNorm in eval mode: its statistics saw only the losses' setup forward (one batch), no training step (3).
    tracked = [v.item() for k, v in body.items() if k.endswith("num_batches_tracked")]
    assert tracked and set(tracked) == {1}
    assert "loss/ce" in records(tmp_path / "out")[0]


# ----------------------------------------------------------------------------- resuming
@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("teacher")
    spec = {"kind": "train", "name": "teacher", "epochs": 1, "batch_size": 32, "precision": "fp32", "threads": 1,
            "data": TINY_DATA, "model": TINY_MODEL, "output_dir": str(tmp / "runs")}
    result = CliRunner().invoke(cli, ["run", str(write(spec, tmp / "spec.yaml")), "--out", str(tmp / "teacher"), "--quiet"])
    assert result.exit_code == 0, result.output
    return tmp / "teacher"


def test_a_staged_run_killed_at_any_write_resumes_bit_for_bit(monkeypatch, tmp_path, teacher_checkpoint):
    """Two epochs per stage: a resume inside stage 1 restores its optimizer's momentum, one at the
    boundary starts stage 2's fresh optimizer (as the uninterrupted run does), one inside stage 2
    rebuilds stage 2's optimizer before loading its state."""
    spec = staged(tmp_path, epochs=4, teachers=[{"name": "t1", "checkpoint": str(teacher_checkpoint)}],
                  stages=[{**TWO_STAGES[0], "epochs": 2}, {"name": "main", "epochs": 2}])
    reference_spec = write({**spec, "output_dir": str(tmp_path / "reference" / "runs")}, tmp_path / "reference" / "spec.yaml")
    with monkeypatch.context() as m:
        counter = Faults(m)
        run_to_end(reference_spec, tmp_path / "reference" / "out")
    reference = outcome(tmp_path / "reference" / "out", tmp_path / "reference")
    assert [r["stage"] for r in reference["records"]] == ["warm", "warm", "main", "main"]
    left = []  # the stage each kill left in the saved state
    for index in range(counter.calls):
        folder = tmp_path / f"kill-{index}"
        spec_path = write({**spec, "output_dir": str(folder / "runs")}, folder / "spec.yaml")
        with monkeypatch.context() as m:
            Faults(m, fail_at=index)
            with pytest.raises(Killed):
                CliRunner().invoke(cli, ["run", str(spec_path), "--out", str(folder / "out"), "--quiet"], catch_exceptions=False)
        left.append((state_meta(folder / "out") or {}).get("stage"))
        run_to_end(spec_path, folder / "out")
        same(outcome(folder / "out", folder), reference)
    assert counter.calls >= 13  # spec, metrics at the start, 4 x (metrics, state), model, manifest, summary
    assert {"index": 0, "name": "warm", "epoch": 1} in left  # killed inside stage 1
    assert {"index": 0, "name": "warm", "epoch": 2} in left  # killed at the boundary: stage 1 done, stage 2 not begun
    assert {"index": 1, "name": "main", "epoch": 1} in left  # killed inside stage 2
