"""The Python API (kdzoo.load_spec / run_spec / load_model / load_summary): the same
validation, runs and errors as the CLI; the loaded model reproduces the run's recorded
metrics; and the worked example of docs/python-api.md runs as written."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

import kdzoo
from kdzoo import rundir
from kdzoo.cli import cli
from tests.conftest import TINY_TRAIN

DOC = Path(__file__).resolve().parent.parent / "docs" / "python-api.md"
_RUN_BLOCK = re.compile(r"<!-- run -->\n```(python|bash)\n(.*?)\n```", re.S)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny train run, through the API (shared by the tests that only read it)."""
    folder = tmp_path_factory.mktemp("api")
    spec = {**copy.deepcopy(TINY_TRAIN), "output_dir": str(folder / "runs")}
    result = kdzoo.run_spec(spec, out=folder / "run", log=None)
    return spec, result


def test_import_kdzoo_stays_torch_free_and_exports_the_api():
    probe = ("import sys, kdzoo\n"
             "assert 'torch' not in sys.modules\n"
             "assert {'load_spec', 'run_spec', 'load_model', 'load_summary', 'RunResult', 'Spec'} <= set(kdzoo.__all__)\n"
             "assert kdzoo.run_spec.__module__ == 'kdzoo.python_api'\n"
             "assert 'torch' not in sys.modules, 'resolving the API imported torch'\n"
             "import kdzoo.run\n"
             "assert kdzoo.run_spec is not kdzoo.run\n")
    process = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert process.returncode == 0, process.stderr
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        kdzoo.nothing  # noqa: B018


def test_a_bad_spec_raises_the_message_the_cli_prints(write_spec, tiny_distill):
    bad = {**tiny_distill, "epochs": 0, "losses": [{"name": "ce"}, {"name": "kdd"}]}
    path = write_spec(bad)
    printed = CliRunner().invoke(cli, ["validate", str(path)])
    assert printed.exit_code == 2
    with pytest.raises(kdzoo.KdzooError) as from_file:
        kdzoo.load_spec(path)
    assert printed.output.strip() == f"Error: {from_file.value}"
    assert "epochs: Input should be greater than or equal to 1 (got 0)" in str(from_file.value)
    assert "losses.1.name: unknown loss 'kdd' (did you mean 'kd'?)" in str(from_file.value)
    with pytest.raises(kdzoo.KdzooError) as from_dict:
        kdzoo.load_spec(bad)  # the same problems; the dict is named as the source
    assert str(from_dict.value) == str(from_file.value).replace(str(path), "<spec dict>")


def test_load_spec_applies_overrides_and_expands_the_matrix(tiny_train):
    spec = kdzoo.load_spec({**tiny_train, "matrix": {"seed": [0, 1]}}, overrides=["epochs=3", "matrix.optimizer.lr=[0.1,0.2]"])
    assert spec.grid and len(spec.runs) == 4
    assert sorted({s.seed for _, s in spec.runs}) == [0, 1] and {s.epochs for _, s in spec.runs} == {3}
    assert sorted({s.optimizer.lr for _, s in spec.runs}) == [0.1, 0.2]
    assert spec.arms == [name for name, _ in spec.runs] and len(set(spec.arms)) == 4
    with pytest.raises(kdzoo.KdzooError, match=r"\[matrix arm .*\] epochs"):
        kdzoo.load_spec({**tiny_train, "matrix": {"epochs": [1, 0]}})


def test_run_spec_returns_what_the_run_wrote(trained):
    _, result = trained
    assert not result.grid and result.failed == [] and list(result.summaries) == ["tiny-train"]
    on_disk = json.loads((result.run_dir / rundir.SUMMARY_FILE).read_text())
    assert result.summaries["tiny-train"] == on_disk == kdzoo.load_summary(result.run_dir)
    assert result.final == {"tiny-train": on_disk["final"]} and result.metrics == on_disk["final"]
    assert result.run_dirs == {"tiny-train": result.run_dir} and rundir.is_finished(result.run_dir)
    assert 0.0 <= result.metrics["test/top1/model"] <= 1.0


def test_the_loaded_model_reproduces_the_recorded_test_accuracy(trained):
    from kdzoo.run.data import load_data

    spec_data, result = trained
    model = kdzoo.load_model(result.run_dir)
    assert isinstance(model, torch.nn.Module) and not model.training
    assert not any(name.startswith(rundir.LOSSES_PREFIX) for name in model.state_dict())
    spec = kdzoo.load_spec(spec_data)
    data = load_data(spec.runs[0][1].data, spec.host.registry)
    with torch.no_grad():  # float images in [0, 1]: the model normalises them itself
        predicted = model(data.test_images.float() / 255).argmax(-1)
    top1 = (predicted == data.test_labels).float().mean().item()
    assert top1 == pytest.approx(result.metrics["test/top1/model"], abs=1e-6)
    from_file = kdzoo.load_model(result.run_dir / rundir.MANIFEST_FILE)  # a checkpoint file works too
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(from_file(images), model(images))


def test_load_model_refuses_what_is_not_a_finished_run(trained, tmp_path):
    _, result = trained
    with pytest.raises(kdzoo.KdzooError, match="run directory not found"):
        kdzoo.load_model(tmp_path / "nothing")
    with pytest.raises(kdzoo.KdzooError, match="is not a finished kdzoo run directory"):
        kdzoo.load_model(tmp_path)
    grid = tmp_path / "grid"
    (grid / rundir.ARMS_DIR / "lr0.1").mkdir(parents=True)
    with pytest.raises(kdzoo.KdzooError, match=r"is a grid, not one run: .*arms/NAME \(lr0.1\)"):
        kdzoo.load_model(grid)
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / rundir.FAILED_FILE).write_text(json.dumps({"error": "the loss became NaN"}))
    with pytest.raises(kdzoo.KdzooError, match=r"failed \(the loss became NaN\)"):
        kdzoo.load_model(failed)
    stopped = tmp_path / "stopped"
    rundir.state_file(stopped).parent.mkdir(parents=True)
    rundir.state_file(stopped).write_bytes(b"")
    with pytest.raises(kdzoo.KdzooError, match=f"unfinished run .*--resume {re.escape(str(stopped))}"):
        kdzoo.load_model(stopped)
    with pytest.raises(kdzoo.KdzooError, match="unfinished run"):
        kdzoo.load_summary(stopped)
    assert not rundir.is_finished(stopped)


def test_a_grid_over_seeds_runs_fused_with_its_study_report(tiny_train, tmp_path):
    matrix = {"seed": [0, 1], "optimizer.lr": [0.1, 0.05]}  # arms of one seed share a pass
    spec = {**tiny_train, "epochs": 1, "output_dir": str(tmp_path / "runs"), "matrix": matrix}
    lines: list[str] = []
    result = kdzoo.run_spec(spec, log=lines.append)
    assert result.grid and result.run_dir == tmp_path / "runs" / "tiny-train" and result.failed == []
    assert len(result.summaries) == 4
    for arm, arm_dir in result.run_dirs.items():
        assert arm_dir == rundir.arm_dir(result.run_dir, arm) and rundir.is_finished(arm_dir)
        assert result.summaries[arm] == json.loads((arm_dir / rundir.SUMMARY_FILE).read_text())
    assert sum("[2 of 4 arms, fused in one pass]" in line for line in lines) == 2
    assert result.report_dir == result.run_dir and (result.report_dir / "study.md").is_file()
    last = list(result.summaries)[-1]
    again = kdzoo.run_spec(spec, arms=[last], log=lines.append)  # finished: skipped, same figures
    assert list(again.summaries) == [last] and again.final[last] == result.final[last]
    assert any(f"{last}: already finished, skipped" in line for line in lines)
    with pytest.raises(kdzoo.KdzooError, match="holds 4 arms"):
        result.metrics  # noqa: B018


def test_a_failed_arm_is_listed_not_raised(tiny_train, tmp_path):
    spec = {**tiny_train, "epochs": 1, "optimizer": {"nesterov": False}, "schedule": {"name": "constant"},
            "output_dir": str(tmp_path / "runs"), "matrix": {"optimizer.lr": [1e30, 0.05]}}
    result = kdzoo.run_spec(spec, log=None)
    assert result.failed == ["lr1e30"]
    assert "the loss became" in result.summaries["lr1e30"]["failed"]
    assert rundir.is_finished(result.run_dirs["lr0.05"])


def test_resume_takes_a_run_directory(tmp_path, tiny_train):
    with pytest.raises(kdzoo.KdzooError, match="is not a kdzoo run directory"):
        kdzoo.run_spec(tmp_path, resume=True)
    with pytest.raises(kdzoo.KdzooError, match="give the run directory as spec_or_path"):
        kdzoo.run_spec(tiny_train, out=tmp_path, resume=True)


def test_the_cli_and_the_api_share_the_run(trained, write_spec, tmp_path):
    spec_data, result = trained
    path = write_spec({k: v for k, v in spec_data.items() if k != "output_dir"})
    printed = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "cli"), "--quiet"])
    assert printed.exit_code == 0, printed.output
    assert f"{path}: train run -> {tmp_path / 'cli'}" in printed.output and "total time:" in printed.output
    cli_final = json.loads((tmp_path / "cli" / rundir.SUMMARY_FILE).read_text())["final"]
    assert cli_final == result.metrics  # deterministic on the CPU for a seed


def doc_blocks() -> list[tuple[str, str]]:
    return _RUN_BLOCK.findall(DOC.read_text())


def test_the_doc_marks_its_examples():
    languages = [language for language, _ in doc_blocks()]
    assert languages.count("python") >= 3 and "bash" in languages


def test_the_docs_worked_example_runs(tmp_path, monkeypatch):
    """Every ``<!-- run -->`` block of docs/python-api.md, in order, in one namespace, in an
    empty working directory; a bash block's ``kdzoo ...`` lines run through the CLI."""
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None:
        pytest.skip("the export example needs the export extra (onnx, onnxscript, onnxruntime)")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_python_api"}
    for language, code in doc_blocks():
        if language == "python":
            exec(compile(code, f"{DOC.name} block", "exec"), namespace)  # noqa: S102
            continue
        for line in code.splitlines():
            if line.strip():
                words = shlex.split(line)
                assert words[0] == "kdzoo", line
                outcome = CliRunner().invoke(cli, words[1:])
                assert outcome.exit_code == 0, outcome.output
    assert (tmp_path / "tiny.onnx").is_file() and (tmp_path / "tiny-model" / "config.json").is_file()
    config = yaml.safe_load((tmp_path / "tiny-model" / "config.json").read_text())
    assert config["model"]["name"] == "cifar-resnet" and config["model"]["params"]["width"] == 4  # the student, not the teacher
