"""The CLI through click's CliRunner and as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from click.testing import CliRunner

import kdzoo
from kdzoo.cli import cli


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and kdzoo.__version__ in result.output


def test_validate_ok(tiny_distill, write_spec):
    result = CliRunner().invoke(cli, ["validate", str(write_spec(tiny_distill))])
    assert result.exit_code == 0 and "valid, one distill run" in result.output


def test_run_prints_table_and_writes_run_dir(tiny_distill, write_spec, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", str(write_spec(tiny_distill)), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "| student" in result.output and "fidelity to ensemble" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["role"] == "student" and "test/fidelity/student~ensemble" in summary["final"]
    again = CliRunner().invoke(cli, ["run", str(write_spec(tiny_distill)), "--out", str(out)])
    assert again.exit_code == 2 and "already holds a finished run" in again.output


def test_grid_rerun_skips_finished_arms(tiny_distill, write_spec, tmp_path):
    spec = write_spec({**tiny_distill, "epochs": 1, "matrix": {"seed": [0, 1]}})
    first = CliRunner().invoke(cli, ["run", str(spec), "--quiet"])
    assert first.exit_code == 0, first.output
    assert "2 runs" in first.output and "| seed0" in first.output and "| seed1" in first.output
    assert (tmp_path / "runs" / "tiny-distill" / "arms" / "seed1" / "summary.json").is_file()
    second = CliRunner().invoke(cli, ["run", str(spec), "--quiet"])
    assert second.output.count("already finished, skipped") == 2
    only = CliRunner().invoke(cli, ["run", str(spec), "--quiet", "--arms", "*1"])
    assert only.output.count("already finished, skipped") == 1 and "1 runs" in only.output
    none = CliRunner().invoke(cli, ["run", str(spec), "--arms", "nothing*"])
    assert none.exit_code == 2 and "no arm matches" in none.output


def _run(*args, **kwargs):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "kdzoo", *args], capture_output=True, text=True, env=env, timeout=300, **kwargs)


def test_subprocess_validate_and_run(tiny_distill, write_spec, tmp_path):
    bad = write_spec({**tiny_distill, "epochs": 0}, name="bad.yaml")
    result = _run("validate", str(bad))
    assert result.returncode == 2
    assert "epochs: Input should be greater than or equal to 1 (got 0)" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    good = write_spec(tiny_distill)
    result = _run("run", str(good), "--out", str(tmp_path / "sub"), "--set", "epochs=1")
    assert result.returncode == 0, result.stderr
    assert "| student" in result.stdout
    assert json.loads((tmp_path / "sub" / "summary.json").read_text())["epochs"] == 1


def test_fast_commands_do_not_import_torch():
    code = "import sys; from kdzoo.cli import cli; cli(['validate', '--help'], standalone_mode=False); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().endswith("False"), result.stdout + result.stderr


def test_a_diverging_arm_does_not_end_the_grid(tiny_train, write_spec, tmp_path):
    spec = {**tiny_train, "epochs": 1, "optimizer": {"nesterov": False}, "schedule": {"name": "constant"}, "matrix": {"optimizer.lr": [1e30, 0.05]}}
    result = CliRunner().invoke(cli, ["run", str(write_spec(spec)), "--quiet"])
    assert result.exit_code == 1, result.output  # a grid with a failed arm exits non-zero
    assert "1 of 2 arms failed: lr1e30" in result.output
    assert "lr1e30: failed: the loss became" in result.output
    assert "(failed)" in result.output and "| lr0.05" in result.output
    assert (tmp_path / "runs" / "tiny-train" / "arms" / "lr1e30" / "failed.json").is_file()


def test_run_table_shows_attention_on_object_with_masks(tiny_distill, write_spec, tmp_path):
    tiny_distill["metrics"] = ["accuracy", "fidelity", {"name": "attention-iou", "params": {"overlay_images": 0}}]
    result = CliRunner().invoke(cli, ["run", str(write_spec(tiny_distill)), "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "attention on object (IoU)" in result.output
    final = json.loads((tmp_path / "o" / "summary.json").read_text())["final"]
    assert 0.0 <= final["test/attn_object_iou/student"] <= 1.0 and "test/attn_iou/student~t1" in final
