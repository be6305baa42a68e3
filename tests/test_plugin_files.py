"""A custom loss in one Python file, used without packaging it: ``plugins: [file.py]`` in
a spec (relative to the spec) or ``kdzoo run --plugins-dir DIR``, loaded through the same
validation and clash rules as an installed package, recorded in the run's manifest."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap

import yaml
from click.testing import CliRunner

from kdzoo.cli import cli

MY_LOSSES = textwrap.dedent('''
    """A prototype: KD with a temperature on the student only."""
    import torch.nn.functional as F
    from pydantic import Field
    from kdzoo import hookimpl
    from kdzoo.api import Loss, Params

    class SharpKDParams(Params):
        temperature: float = Field(2.0, gt=0)

    class SharpKD(Loss):
        def pair(self, student, teacher, batch, index):
            t = self.params.temperature
            return F.kl_div(F.log_softmax(student.logits.float() / t, -1), F.softmax(teacher.logits.detach().float(), -1), reduction="batchmean")

    @hookimpl
    def register_losses(register):
        register("sharp-kd", SharpKD, params=SharpKDParams, description="KD, temperature on the student only")
''')

CLASHING = textwrap.dedent('''
    from kdzoo import hookimpl

    @hookimpl
    def register_losses(register):
        register("kd", "math:prod", description="tries to replace the built-in kd")
''')


def _spec(tiny_distill, tmp_path, **extra):
    return {**tiny_distill, "epochs": 1, "output_dir": str(tmp_path / "runs"),
            "losses": [{"name": "ce", "weight": 0.5}, {"name": "sharp-kd", "weight": 0.5}], **extra}


def test_a_spec_names_its_plugin_file_and_the_manifest_records_it(tiny_distill, tmp_path):
    project = tmp_path / "project"
    (project / "methods").mkdir(parents=True)
    plugin = project / "methods" / "my_losses.py"
    plugin.write_text(MY_LOSSES)
    spec = project / "spec.yaml"
    spec.write_text(yaml.safe_dump(_spec(tiny_distill, tmp_path, plugins=["methods/my_losses.py"])))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", str(spec), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["plugin_files"] == [{"path": str(plugin.resolve()), "sha256": hashlib.sha256(plugin.read_bytes()).hexdigest()}]
    resolved = yaml.safe_load((out / "spec.yaml").read_text())
    assert resolved["plugins"] == [str(plugin.resolve())]  # absolute: --resume works from anywhere
    assert "loss/sharp-kd" in json.loads((out / "metrics.jsonl").read_text().splitlines()[0])


def test_resume_reloads_the_runs_plugin_files(tiny_distill, tmp_path, monkeypatch):
    plugin = tmp_path / "my_losses.py"
    plugin.write_text(MY_LOSSES)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(_spec(tiny_distill, tmp_path, plugins=["my_losses.py"], epochs=2)))
    out = tmp_path / "out"
    assert CliRunner().invoke(cli, ["run", str(spec), "--out", str(out), "--quiet"]).exit_code == 0
    (out / "summary.json").unlink()  # as if it stopped before finishing
    monkeypatch.chdir(tmp_path.parent)
    resumed = CliRunner().invoke(cli, ["run", "--resume", str(out), "--quiet"])
    assert resumed.exit_code == 0, resumed.output


def test_plugins_dir_adds_every_file_of_a_folder(tiny_distill, tmp_path, write_spec):
    folder = tmp_path / "prototypes"
    folder.mkdir()
    (folder / "my_losses.py").write_text(MY_LOSSES)
    spec = write_spec(_spec(tiny_distill, tmp_path))
    without = CliRunner().invoke(cli, ["validate", str(spec)])
    assert without.exit_code == 2 and "unknown loss 'sharp-kd'" in without.output
    with_dir = CliRunner().invoke(cli, ["validate", str(spec), "--plugins-dir", str(folder)])
    assert with_dir.exit_code == 0, with_dir.output


def test_a_plugin_file_is_refused_when_it_clashes_with_a_builtin(tiny_distill, tmp_path, write_spec):
    (tmp_path / "clash.py").write_text(CLASHING)
    spec = write_spec({**tiny_distill, "plugins": ["clash.py"]})
    result = CliRunner().invoke(cli, ["validate", str(spec)])
    assert "loss 'kd' is registered twice: plugin 'kdzoo-losses' already provides it, so plugin 'clash.py' is refused" in result.output
    assert result.exit_code == 2, result.output  # named by the spec: refused, not skipped


def test_a_missing_or_non_python_plugin_file_is_a_spec_error(tiny_distill, write_spec):
    result = CliRunner().invoke(cli, ["validate", str(write_spec({**tiny_distill, "plugins": ["nope.py", "notes.txt"]}))])
    assert result.exit_code == 2
    assert "plugins.0: plugin file not found" in result.output and "plugins.1: 'notes.txt' is not a .py file" in result.output
    assert "Traceback" not in result.output


def test_a_plugin_file_run_as_a_subprocess(tiny_distill, tmp_path):
    (tmp_path / "my_losses.py").write_text(MY_LOSSES)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(_spec(tiny_distill, tmp_path, plugins=["my_losses.py"])))
    process = subprocess.run([sys.executable, "-m", "kdzoo", "validate", str(spec)], capture_output=True, text=True)
    assert process.returncode == 0, process.stderr
    assert "valid, one distill run" in process.stdout


def test_plugins_check_takes_a_plugin_file(tmp_path):
    good = tmp_path / "my_losses.py"
    good.write_text(MY_LOSSES)
    result = CliRunner().invoke(cli, ["plugins", "check", str(good)])
    assert result.exit_code == 0, result.output
    assert "plugin file imports" in result.output and "sharp-kd" in result.output
    clash = tmp_path / "clash.py"
    clash.write_text(CLASHING)
    refused = CliRunner().invoke(cli, ["plugins", "check", str(clash)])
    assert refused.exit_code != 0 and "'kdzoo-losses'" in refused.output
    missing = CliRunner().invoke(cli, ["plugins", "check", str(tmp_path / "nope.py")])
    assert missing.exit_code != 0 and "plugin file not found" in missing.output


def test_plugins_new_from_a_file_packages_it_unchanged(tmp_path, monkeypatch):
    from kdzoo.authoring.check import check_plugin

    prototype = tmp_path / "my_losses.py"
    prototype.write_text(MY_LOSSES)
    root = tmp_path / "kdzoo-sharp"
    result = CliRunner().invoke(cli, ["plugins", "new", "kdzoo-sharp", "--from", str(prototype), "--dir", str(root)])
    assert result.exit_code == 0, result.output
    assert (root / "kdzoo_sharp" / "__init__.py").read_text() == MY_LOSSES
    assert '[project.entry-points.kdzoo]\nkdzoo-sharp = "kdzoo_sharp"' in (root / "pyproject.toml").read_text()
    assert "check_plugin(\"kdzoo_sharp\")" in (root / "tests" / "test_kdzoo_sharp.py").read_text()
    monkeypatch.syspath_prepend(str(root))
    report = check_plugin("kdzoo_sharp")
    assert report.ok, report.to_text()


def test_a_plugin_file_set_on_the_command_line_is_loaded(tiny_distill, tmp_path, write_spec):
    (tmp_path / "my_losses.py").write_text(MY_LOSSES)
    spec = write_spec(_spec(tiny_distill, tmp_path))
    result = CliRunner().invoke(cli, ["validate", str(spec), "--set", f"plugins=[{tmp_path / 'my_losses.py'}]"])
    assert result.exit_code == 0, result.output
