"""End to end on tiny synthetic data: train, checkpoint, distil from it, resume, failures."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from kdzoo import rundir
from kdzoo.run import checkpoint as ckpt
from kdzoo.cli import cli
from kdzoo.errors import KdzooError, TrainingError
from kdzoo.run.runner import run_single
from kdzoo.spec import validate_spec


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_run_dir_and_checkpoint(host, tiny_train, tmp_path):
    spec = validate_spec({**tiny_train, "output_dir": str(tmp_path)}, host.registry)
    summary = run_single(spec, host, tmp_path / "run", log=lambda _: None, progress=True)
    run = tmp_path / "run"
    assert [r["epoch"] for r in _records(run)] == [1, 2]
    assert 0.0 <= summary["final"]["test/top1/model"] <= 1.0
    weights, manifest = rundir.resolve_checkpoint(run)
    # the resolved model reference: enough to rebuild the network, defaults included
    assert manifest["model"]["name"] == "cifar-resnet"
    assert manifest["model"]["params"]["depth"] == 8 and manifest["model"]["params"]["width"] == 4
    assert manifest["seed"] == 0 and manifest["num_classes"] == 4
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["spec"]["epochs"] == 2 and "test/top1/model" in manifest["metrics"]
    assert all(k.startswith("body.") for k in ckpt.load_tensors(weights))
    assert (run / "spec.yaml").is_file() and (run / "summary.json").is_file()


def test_checkpoint_round_trip_gives_identical_outputs(host, tiny_train, tmp_path):
    from kdzoo.run.data import load_data
    from kdzoo.run.teachers import load_teacher

    spec = validate_spec(tiny_train, host.registry)
    run_single(spec, host, tmp_path / "run", log=lambda _: None, progress=True)
    data = load_data(spec.data, host.registry)
    network, _ = load_teacher(host, tmp_path / "run" / "model.safetensors", data)
    tensors = ckpt.load_tensors(tmp_path / "run" / "model.safetensors")
    for key, value in network.body.state_dict().items():
        torch.testing.assert_close(value, tensors[f"body.{key}"])


def test_distill_from_a_checkpoint_teacher(host, tiny_train, tiny_distill, tmp_path):
    teacher_spec = validate_spec(tiny_train, host.registry)
    run_single(teacher_spec, host, tmp_path / "teacher", log=lambda _: None, progress=True)
    tiny_distill["teachers"] = [{"name": "t1", "checkpoint": str(tmp_path / "teacher")}]
    spec = validate_spec(tiny_distill, host.registry)
    summary = run_single(spec, host, tmp_path / "student", log=lambda _: None, progress=True)
    final = summary["final"]
    assert {"test/top1/student", "test/top1/t1", "test/fidelity/student~ensemble", "test/fidelity/student~t1"} <= set(final)
    # the teacher is frozen: its accuracy in the distill run equals its own final accuracy
    assert final["test/top1/t1"] == pytest.approx(json.loads((tmp_path / "teacher" / "summary.json").read_text())["final"]["test/top1/model"])


def test_resume_after_interruption_matches_uninterrupted_run(host, tiny_distill, tmp_path, interrupt_in_epoch):
    from kdzoo.run.checkpoint import load_tensors_with_metadata

    tiny_distill.update(epochs=3, output_dir=str(tmp_path / "runs"))
    spec = validate_spec(tiny_distill, host.registry)
    full = run_single(spec, host, tmp_path / "full", log=lambda _: None, progress=True)

    restore = interrupt_in_epoch(2)
    with pytest.raises(KeyboardInterrupt):
        run_single(spec, host, tmp_path / "cut", log=lambda _: None, progress=True)
    _, header = load_tensors_with_metadata(rundir.state_file(tmp_path / "cut"))
    assert json.loads(header["kdzoo_state"])["epoch"] == 2
    restore()
    resumed = CliRunner().invoke(cli, ["run", "--resume", str(tmp_path / "cut"), "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output
    cut = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert cut["final"] == full["final"]
    assert [r["loss"] for r in _records(tmp_path / "cut")] == [r["loss"] for r in _records(tmp_path / "full")]


def test_same_seed_same_result(host, tiny_train, tmp_path):
    spec = validate_spec(tiny_train, host.registry)
    a = run_single(spec, host, tmp_path / "a", log=lambda _: None, progress=True)
    b = run_single(spec, host, tmp_path / "b", log=lambda _: None, progress=True)
    assert a["final"] == b["final"]
    run_single(validate_spec({**tiny_train, "seed": 1}, host.registry), host, tmp_path / "c", log=lambda _: None, progress=True)
    assert [r["loss"] for r in _records(tmp_path / "c")] != [r["loss"] for r in _records(tmp_path / "a")]


def test_non_finite_loss_stops_and_keeps_last_good_state(host, tiny_train, tmp_path):
    tiny_train.update(epochs=3, optimizer={"lr": 1e30, "nesterov": False}, schedule={"name": "constant"})
    spec = validate_spec(tiny_train, host.registry)
    with pytest.raises(TrainingError, match="the loss became (nan|inf)"):
        run_single(spec, host, tmp_path / "run", log=lambda _: None, progress=True)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_teacher_checkpoint_that_does_not_match(host, tiny_train, tiny_distill, tmp_path):
    run_single(validate_spec(tiny_train, host.registry), host, tmp_path / "teacher", log=lambda _: None, progress=True)
    manifest_path = tmp_path / "teacher" / "model.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["model"]["params"]["width"] = 8  # weights are width 4
    manifest_path.write_text(json.dumps(manifest))
    tiny_distill["teachers"] = [{"name": "t1", "checkpoint": str(tmp_path / "teacher")}]
    with pytest.raises(KdzooError, match="does not match model 'cifar-resnet'.*wrong shape"):
        run_single(validate_spec(tiny_distill, host.registry), host, tmp_path / "s", log=lambda _: None, progress=True)


def test_missing_teacher_checkpoint_is_a_spec_error(tiny_distill, write_spec, tmp_path):
    tiny_distill["teachers"] = [{"name": "t1", "checkpoint": str(tmp_path / "nowhere.safetensors")}]
    for command in (["validate"], ["run", "--out", str(tmp_path / "r")]):
        result = CliRunner().invoke(cli, [command[0], str(write_spec(tiny_distill)), *command[1:]])
        assert result.exit_code == 2 and "teachers.0: checkpoint: checkpoint not found" in result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_mismatched_checkpoint_fails_before_inline_teachers_train(host, tiny_train, tiny_distill, tmp_path):
    run_single(validate_spec({**tiny_train, "data": {**tiny_train["data"], "params": {**tiny_train["data"]["params"], "num_classes": 5}}}, host.registry), host, tmp_path / "five", log=lambda _: None, progress=True)
    tiny_distill["output_dir"] = str(tmp_path / "runs")
    tiny_distill["teachers"].append({"name": "t2", "checkpoint": str(tmp_path / "five")})
    with pytest.raises(KdzooError, match="predicts 5 classes but dataset 'synthetic-shapes' has 4"):
        run_single(validate_spec(tiny_distill, host.registry), host, tmp_path / "s", log=lambda _: None, progress=True)
    assert not (tmp_path / "runs" / "teachers").exists()  # the inline teacher t1 was never trained


def test_a_distillation_loss_in_a_train_run_is_refused(host, tiny_train, tmp_path):
    tiny_train["losses"] = [{"name": "kd"}]
    with pytest.raises(KdzooError, match="'kd' distils from teachers"):
        run_single(validate_spec(tiny_train, host.registry), host, tmp_path / "r", log=lambda _: None, progress=True)


def test_inline_teachers_are_trained_once_and_reused(host, tiny_distill, tmp_path):
    tiny_distill["output_dir"] = str(tmp_path / "runs")
    spec = validate_spec(tiny_distill, host.registry)
    lines: list[str] = []
    run_single(spec, host, tmp_path / "a", log=lines.append, progress=True)
    run_single(spec, host, tmp_path / "b", log=lines.append, progress=True)
    assert sum("training" in line for line in lines) == 1
    assert sum("reusing" in line for line in lines) == 1
