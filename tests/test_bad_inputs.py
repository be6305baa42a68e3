"""Hostile input: each bad checkpoint, spec, CLI value or changed spec gets a clean
refusal (field or file named, exit 2, no traceback), never a silently wrong result."""

from __future__ import annotations

import json
import os
import stat

import pytest
import yaml
from click.testing import CliRunner

from kdzoo import rundir
from kdzoo.cli import cli


def invoke(*args, **kwargs):
    result = CliRunner().invoke(cli, [str(a) for a in args], **kwargs)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def _train(tmp_path, tiny_train, name="teacher", **extra):
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(yaml.safe_dump({**tiny_train, "epochs": 1, "output_dir": str(tmp_path / "runs"), **extra}))
    out = tmp_path / name
    result = invoke("run", spec, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    return out


def _distill_from(tmp_path, tiny_distill, checkpoint):
    spec = {**tiny_distill, "output_dir": str(tmp_path / "runs"), "teachers": [{"name": "t1", "checkpoint": str(checkpoint)}]}
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# ----------------------------------------------------------------------------- checkpoint manifests
@pytest.mark.parametrize(
    "spoil, expected",
    [
        (lambda m: [1, 2], "is not a kdzoo-checkpoint/1 manifest"),
        (lambda m: {**m, "model": {"name": "not-installed-model"}}, "model.name: unknown model 'not-installed-model'"),
        (lambda m: {**m, "model": {"name": "cifar-resnet", "params": {"depth": "deep"}}}, "model.params: depth: Input should be 8, 14, 20"),
        (lambda m: {**m, "model": None}, "model: Input should be a valid dictionary"),
        (lambda m: {**m, "num_classes": "4"}, "num_classes must be a positive integer (got '4')"),
    ],
    ids=["not-an-object", "model-not-installed", "bad-params", "model-null", "class-count-a-string"],
)
def test_a_bad_manifest_is_refused_at_validate(tmp_path, tiny_train, tiny_distill, spoil, expected):
    run = _train(tmp_path, tiny_train)
    manifest_path = run / rundir.MANIFEST_FILE
    manifest_path.write_text(json.dumps(spoil(json.loads(manifest_path.read_text()))))
    result = invoke("validate", _distill_from(tmp_path, tiny_distill, run))
    assert result.exit_code == 2, result.output
    assert expected in result.output and "teachers.0: checkpoint:" in result.output


def test_weights_that_do_not_belong_to_their_manifest_are_refused(tmp_path, tiny_train, tiny_distill):
    first = _train(tmp_path, tiny_train, "first")
    second = _train(tmp_path, tiny_train, "second", seed=1)
    (first / rundir.MODEL_FILE).write_bytes((second / rundir.MODEL_FILE).read_bytes())
    result = invoke("run", _distill_from(tmp_path, tiny_distill, first), "--out", tmp_path / "student", "--quiet")
    assert result.exit_code == 2 and "does not match its manifest model.json (sha256 differs)" in result.output


def test_class_count_mismatch_message_is_not_self_contradicting(tmp_path, tiny_train, tiny_distill):
    run = _train(tmp_path, tiny_train)
    spec = _distill_from(tmp_path, tiny_distill, run)
    data = yaml.safe_load(spec.read_text())
    data["data"]["params"]["num_classes"] = 3
    spec.write_text(yaml.safe_dump(data))
    result = invoke("run", spec, "--out", tmp_path / "student", "--quiet")
    assert result.exit_code == 2 and "predicts 4 classes but dataset 'synthetic-shapes' has 3" in result.output


def test_a_corrupt_training_state_is_refused_on_resume(tmp_path, tiny_train):
    run = _train(tmp_path, tiny_train)
    (run / rundir.SUMMARY_FILE).unlink()
    rundir.state_file(run).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    result = invoke("run", "--resume", run, "--quiet")
    assert result.exit_code == 2 and "last.safetensors" in result.output


def test_affinity_of_a_pickle_file_is_refused(tmp_path):
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"\x80\x04\x95\x00\x00\xff\xfe binary pickle")
    result = invoke("affinity", pt)
    assert result.exit_code == 2 and "not a text file" in result.output


# ----------------------------------------------------------------------------- spec and CLI values
@pytest.mark.parametrize(
    "override, expected",
    [
        ("epochs=[1,2", "--set epochs: cannot parse the value '[1,2' as YAML"),
        ("epochs=true", "epochs: expected a number, got a boolean"),
        ("losses.0.weight=.inf", "losses.0.weight: Input should be a finite number"),
        ("optimizer.lr=.inf", "optimizer.lr: Input should be a finite number"),
        ("name=" + "a" * 300, "name: String should have at most 100 characters"),
        ("device=" + "x" * 5000, "device: String should have at most 4096 characters"),
    ],
)
def test_bad_set_values_are_refused(tiny_distill, write_spec, override, expected):
    result = invoke("validate", write_spec(tiny_distill), "--set", override)
    assert result.exit_code == 2 and expected in result.output, result.output


def test_a_matrix_key_with_dots_can_be_set(tiny_train, write_spec):
    result = invoke("validate", write_spec(tiny_train), "--set", "matrix.optimizer.lr=[0.1,0.05]")
    assert result.exit_code == 0 and "valid, 2 runs" in result.output, result.output


def test_a_huge_grid_is_refused_with_its_size(tiny_train, write_spec, monkeypatch):
    spec = write_spec({**tiny_train, "matrix": {"seed": list(range(200)), "optimizer.lr": [0.1 * i for i in range(1, 101)]}})
    result = invoke("validate", spec)
    assert result.exit_code == 2 and "matrix: 20,000 arms (200 (seed) x 100 (optimizer.lr)) is more than the limit of 10,000" in result.output
    monkeypatch.setenv("KDZOO_MAX_ARMS", "100")
    small = write_spec({**tiny_train, "matrix": {"seed": list(range(101))}}, name="small.yaml")
    assert "more than the limit of 100" in invoke("validate", small).output


def test_a_binary_spec_file_is_refused(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(bytes(range(256)))
    result = invoke("validate", spec)
    assert result.exit_code == 2 and "not a text file" in result.output


@pytest.mark.parametrize("where", ["inside-a-file", "proc"])
def test_an_out_dir_that_cannot_exist_is_refused_before_work(tiny_train, write_spec, tmp_path, where):
    if where == "inside-a-file":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "run"
    else:
        out = "/proc/kdzoo-run"
    result = invoke("run", write_spec(tiny_train), "--out", out, "--quiet")
    assert result.exit_code == 2 and "cannot create or write the run directory" in result.output


def test_arms_differing_only_in_params_get_distinct_names(tiny_train, write_spec, host):
    from kdzoo.spec import load_spec

    spec = write_spec({**tiny_train, "matrix": {"losses": [[{"name": "ce", "params": {"label_smoothing": 0.0}}], [{"name": "ce", "params": {"label_smoothing": 0.1}}]]}})
    _, runs = load_spec(spec, host.registry)
    names = [name for name, _ in runs]
    assert names == ["ce-label-smoothing0.0", "ce-label-smoothing0.1"]


# ----------------------------------------------------------------------------- changed specs
def test_resume_with_a_changed_spec_is_refused_unless_forced(tmp_path, tiny_train):
    run = _train(tmp_path, tiny_train, epochs=2)
    (run / rundir.SUMMARY_FILE).unlink()  # as if it stopped after its last epoch's state
    spec = yaml.safe_load((run / rundir.SPEC_FILE).read_text())
    spec["optimizer"]["lr"] = 0.5
    (run / rundir.SPEC_FILE).write_text(yaml.safe_dump(spec))
    refused = invoke("run", "--resume", run, "--quiet")
    assert refused.exit_code == 2 and "was started with a different spec (optimizer.lr: 0.1 -> 0.5)" in refused.output
    forced = invoke("run", "--resume", run, "--quiet", "--force")
    assert forced.exit_code == 0, forced.output


def test_a_grid_rerun_with_a_changed_spec_does_not_report_old_results(tiny_train, write_spec):
    spec = write_spec({**tiny_train, "epochs": 1, "name": "g", "matrix": {"seed": [0]}})
    assert invoke("run", spec, "--quiet").exit_code == 0
    changed = invoke("run", spec, "--quiet", "--set", "optimizer.lr=0.2")
    assert changed.exit_code == 2 and "finished with a different spec (optimizer.lr: 0.1 -> 0.2)" in changed.output
    forced = invoke("run", spec, "--quiet", "--set", "optimizer.lr=0.2", "--force")
    assert forced.exit_code == 0 and "already finished" not in forced.output


def test_an_unfinished_run_dir_is_not_overwritten_by_a_new_run(tmp_path, tiny_train, write_spec):
    run = _train(tmp_path, tiny_train)
    (run / rundir.SUMMARY_FILE).unlink()
    result = invoke("run", write_spec(tiny_train), "--out", run, "--quiet")
    assert result.exit_code == 2 and f"continue it with --resume {run}" in result.output


# ----------------------------------------------------------------------------- file modes
def test_files_respect_the_umask(tmp_path, tiny_train):
    old = os.umask(0o022)
    try:
        run = _train(tmp_path, tiny_train)
    finally:
        os.umask(old)
    for name in (rundir.MODEL_FILE, rundir.MANIFEST_FILE, rundir.SUMMARY_FILE, rundir.SPEC_FILE, rundir.METRICS_FILE):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o644, name


@pytest.mark.parametrize("spoil, expected", [
    ("spec", "is not a resolved kdzoo spec"),
    ("metrics", "metrics.jsonl is not a kdzoo metrics history"),
])
def test_a_corrupt_spec_or_history_is_refused_on_resume(tmp_path, tiny_train, spoil, expected):
    run = _train(tmp_path, tiny_train, epochs=2)
    (run / rundir.SUMMARY_FILE).unlink()
    if spoil == "spec":
        (run / rundir.SPEC_FILE).write_text("epochs: [1,\n")
    else:
        (run / rundir.METRICS_FILE).write_text('{"epoch": 1}\nnot json\n')
    result = invoke("run", "--resume", run, "--quiet")
    assert result.exit_code == 2 and expected in result.output, result.output


def test_an_unwritable_dataset_cache_is_one_line(tiny_train, write_spec, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("KDZOO_CACHE", str(tmp_path / "file" / "cache"))
    from kdzoo.run import data

    monkeypatch.setattr(data, "_LOADED", {})
    result = invoke("run", write_spec(tiny_train), "--out", tmp_path / "out", "--quiet")
    assert result.exit_code == 1 and "KDZOO_CACHE: cannot create the dataset cache" in result.output


def test_three_arms_with_one_short_name_all_get_distinct_names():
    from kdzoo.spec.matrix import unique_arm_names

    same = ({"name": "kd"},)
    assert unique_arm_names(["losses"], [same, same, same]) == ["kd-1", "kd-2", "kd-3"]


@pytest.mark.parametrize("value", ["abc", "0", "-1"])
def test_a_bad_arm_limit_is_refused(tiny_train, write_spec, monkeypatch, value):
    monkeypatch.setenv("KDZOO_MAX_ARMS", value)
    result = invoke("validate", write_spec({**tiny_train, "matrix": {"seed": [0, 1]}}))
    assert result.exit_code == 2 and "KDZOO_MAX_ARMS must be a positive whole number" in result.output
