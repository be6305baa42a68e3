"""The plugin contract as `kdzoo run`, `validate` and `plugins` enforce it, each case a
throwaway third-party package installed beside the real built-ins (tests/throwaway.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from kdzoo.cli import cli
from kdzoo.host.loading import ALLOW_LIST_ENV, load_plugins


LOSS_HEADER = """
import torch
import torch.nn.functional as F
from pydantic import Field
from kdzoo import hookimpl
from kdzoo.api import Loss, Params
"""

PER_CLASS_LOSS = LOSS_HEADER + """
class PerClass(Loss):
    uses_teachers = False

    def pair(self, student, teacher, batch, index):
        per_sample = F.cross_entropy(student.logits.float(), batch.targets, reduction="none")
        return per_sample[:, None].expand(-1, student.logits.shape[1])  # (B, C): not per sample

class VectorForward(Loss):
    uses_teachers = False

    def forward(self, batch):
        return F.cross_entropy(batch.student.logits.float(), batch.targets, reduction="none")  # (B,)

@hookimpl
def register_losses(register):
    register("per-class", lambda params: PerClass(params), description="returns (B, C)")
    register("vector-forward", lambda params: VectorForward(params), description="returns (B,)")
"""

FAILING = LOSS_HEADER + """
from kdzoo.api import Metric

class Phase(Params):
    fail_in: str = "none"

class Flaky(Loss):
    uses_teachers = False

    def setup(self, context):
        if self.params.fail_in == "setup":
            raise RuntimeError("boom in setup")

    def pair(self, student, teacher, batch, index):
        if self.params.fail_in == "forward" and batch.step == 1:
            raise RuntimeError("boom in forward")
        return F.cross_entropy(student.logits.float(), batch.targets)

def make_flaky(params):
    if params.fail_in == "factory":
        raise RuntimeError("boom in factory")
    return Flaky(params)

class FlakyMetric(Metric):
    def reset(self):
        pass

    def update(self, batch):
        raise RuntimeError("boom in update")

    def compute(self):
        return {}

@hookimpl
def register_losses(register):
    register("flaky", make_flaky, params=Phase, description="fails where told")

@hookimpl
def register_metrics(register):
    register("flaky-metric", lambda params: FlakyMetric(params), description="fails in update")
"""


def _run(spec_path, *extra):
    return CliRunner().invoke(cli, ["run", str(spec_path), "--quiet", *extra])


# ----------------------------------------------------------------------------- clashes
@pytest.mark.parametrize("newcomer", ["aaa-evil-kd", "zzz-evil-kd"])
def test_a_newcomer_never_evicts_a_builtin_whatever_its_name_sorts_to(site, newcomer):
    site.install(newcomer, LOSS_HEADER + """
@hookimpl
def register_losses(register):
    register("harmless", "math:prod", description="fine on its own")
    register("kd", "math:prod", description="clashes with the built-in")
""")
    host = load_plugins()
    assert host.registry.get("loss", "kd").plugin == "kdzoo-losses"
    assert host.registry.get("loss", "ce").plugin == "kdzoo-losses"  # the built-in plugin loaded whole
    reason = host.registry.failures[newcomer]
    assert "'kdzoo-losses'" in reason and f"'{newcomer}'" in reason and "loss 'kd'" in reason
    assert ("loss", "harmless") not in host.registry.components  # all or nothing


# ----------------------------------------------------------------------------- shapes
def test_a_pair_with_a_per_class_shape_is_refused_not_averaged(site, tiny_train, write_spec):
    site.install("shape-plugin", PER_CLASS_LOSS)
    result = _run(write_spec({**tiny_train, "losses": [{"name": "per-class"}]}))
    assert result.exit_code == 1, result.output
    message = result.output
    assert "loss 'per-class' (plugin 'shape-plugin') failed in forward, epoch 1, step 1" in message
    assert "shape (32, 4)" in message and "one value per sample (32,)" in message
    assert "Traceback" not in message


def test_a_non_scalar_forward_names_the_loss(site, tiny_train, write_spec):
    site.install("shape-plugin", PER_CLASS_LOSS)
    result = _run(write_spec({**tiny_train, "losses": [{"name": "vector-forward"}]}))
    assert result.exit_code == 1, result.output
    assert "loss 'vector-forward' (plugin 'shape-plugin') returned (32,) from forward at epoch 1, step 1" in result.output
    assert "must return a scalar tensor" in result.output


# ----------------------------------------------------------------------------- params bounds
def test_a_default_that_violates_its_own_bound_fails_registration(site, tiny_train, write_spec):
    site.install("bound-plugin", LOSS_HEADER + """
class Bad(Params):
    power: int = Field(2, ge=4)

@hookimpl
def register_losses(register):
    register("bad-bound", "math:prod", params=Bad, description="default below its bound")
""")
    host = load_plugins()
    assert "Bad.power: Input should be greater than or equal to 4" in host.registry.failures["bound-plugin"]
    result = CliRunner().invoke(cli, ["validate", str(write_spec({**tiny_train, "losses": [{"name": "bad-bound"}]}))])
    assert result.exit_code == 2
    assert "loss 'bad-bound' comes from plugin 'bound-plugin', which failed to load" in result.output
    assert "did you mean" not in result.output
    assert result.output.count("greater than or equal to 4") == 2  # the warning, then the field's line


# ----------------------------------------------------------------------------- plugin errors in a run
@pytest.mark.parametrize(
    "phase, expected",
    [
        ("factory", "loss 'flaky' (plugin 'flaky-plugin') failed in its factory: RuntimeError: boom in factory"),
        ("setup", "loss 'flaky' (plugin 'flaky-plugin') failed in setup: RuntimeError: boom in setup"),
        ("forward", "loss 'flaky' (plugin 'flaky-plugin') failed in forward, epoch 1, step 2: RuntimeError: boom in forward"),
    ],
)
def test_plugin_code_failing_in_a_run_gives_one_line_naming_it(site, tiny_train, write_spec, phase, expected):
    site.install("flaky-plugin", FAILING)
    spec = write_spec({**tiny_train, "losses": [{"name": "flaky", "params": {"fail_in": phase}}]})
    result = _run(spec)
    assert result.exit_code == 1, result.output
    assert f"Error: {expected}" in result.output
    assert "Traceback" not in result.output
    debug = CliRunner().invoke(cli, ["--debug", "run", str(spec), "--quiet", "--out", str(spec.parent / "debug")])
    assert isinstance(debug.exception, RuntimeError) and "boom" in str(debug.exception)  # the original, for a traceback


def test_a_metric_failing_in_update_names_metric_plugin_and_split(site, tiny_train, write_spec):
    site.install("flaky-plugin", FAILING)
    result = _run(write_spec({**tiny_train, "epochs": 1, "metrics": ["accuracy", "flaky-metric"]}))
    assert result.exit_code == 1, result.output
    assert "metric 'flaky-metric' (plugin 'flaky-plugin') failed in update on the test split, epoch 1: RuntimeError: boom in update" in result.output


def test_in_a_grid_the_failing_arm_is_marked_and_the_others_go_on(site, tiny_train, write_spec, tmp_path):
    site.install("flaky-plugin", FAILING)
    spec = write_spec({
        **tiny_train, "epochs": 1, "name": "grid",
        "matrix": {"losses": [[{"name": "ce"}], [{"name": "flaky", "params": {"fail_in": "forward"}}]]},
    })
    result = _run(spec)
    assert result.exit_code == 1, result.output
    assert "1 of 2 arms failed: flaky" in result.output
    arms = tmp_path / "runs" / "grid" / "arms"
    assert (arms / "ce" / "summary.json").is_file()
    assert "boom in forward" in json.loads((arms / "flaky" / "failed.json").read_text())["error"]


# ----------------------------------------------------------------------------- failed plugins, allow-list
def test_plugins_lists_a_failed_plugin_once_with_a_clean_reason(site):
    site.install("needs-missing-dep", "import a_module_nobody_has\n")
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # the listing wraps long reasons
    assert text.count("ModuleNotFoundError: No module named 'a_module_nobody_has'") == 1, result.output
    assert "kdzoo-losses" in result.output  # the others still load


def test_a_misspelt_allow_list_name_is_reported(site, tiny_train, write_spec, monkeypatch):
    monkeypatch.setenv(ALLOW_LIST_ENV, "kdzoo-models,kdzoo-data,kdzoo-lossess")
    result = CliRunner().invoke(cli, ["validate", str(write_spec(tiny_train))])
    assert f"{ALLOW_LIST_ENV} names 'kdzoo-lossess', which is not installed (did you mean 'kdzoo-losses'?)" in result.output


def test_uninstalling_a_builtin_asks_first(monkeypatch):
    from kdzoo.cli import plugins as plugin_commands

    calls = []
    monkeypatch.setattr(plugin_commands, "_run_pip", calls.append)
    refused = CliRunner().invoke(cli, ["uninstall", "kdzoo-losses"], input="n\n")
    assert refused.exit_code == 1 and "is a built-in kdzoo plugin" in refused.output and calls == []
    accepted = CliRunner().invoke(cli, ["uninstall", "kdzoo-losses"], input="y\n")
    assert accepted.exit_code == 0 and calls == [["uninstall", "kdzoo-losses", "-y"]]


def test_a_run_subprocess_reports_a_plugin_failure_without_a_traceback(site, tiny_train, write_spec):
    site.install("flaky-plugin", FAILING)
    spec = write_spec({**tiny_train, "losses": [{"name": "flaky", "params": {"fail_in": "setup"}}]})
    process = subprocess.run([sys.executable, "-m", "kdzoo", "run", str(spec), "--quiet"], capture_output=True, text=True, env=site.env())
    assert process.returncode == 1, process.stderr
    assert "loss 'flaky' (plugin 'flaky-plugin') failed in setup" in process.stderr
    assert "Traceback" not in process.stderr


# ----------------------------------------------------------------------------- figures and descriptions
TENSOR_FIGURES = """
import numpy as np
import torch
from kdzoo import hookimpl
from kdzoo.api import Metric, role_key

class Counting(Metric):
    \"\"\"Counts images, reported as a 0-d tensor and as a numpy float.\"\"\"

    def reset(self):
        self.seen = 0

    def update(self, batch):
        self.seen += batch.targets.shape[0]

    def compute(self):
        return {role_key("seen", batch_role): torch.tensor(float(self.seen)) for batch_role in ["model"]} | {"seen_np/model": np.float32(self.seen)}

class Undocumented(Metric):
    def reset(self): pass
    def update(self, batch): pass
    def compute(self): return {}

@hookimpl
def register_metrics(register):
    register("counting", Counting)
    register("undocumented", Undocumented)
"""


def test_tensor_and_numpy_figures_are_recorded_as_numbers(site, tiny_train, write_spec, tmp_path):
    site.install("figures-plugin", TENSOR_FIGURES)
    result = _run(write_spec({**tiny_train, "epochs": 1, "metrics": ["accuracy", "counting"]}), "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["test/seen/model"] == 48.0 and record["test/seen_np/model"] == 48.0


def test_a_description_is_never_borrowed_from_a_base_class(site):
    site.install("figures-plugin", TENSOR_FIGURES)
    registry = load_plugins().registry
    assert registry.get("metric", "counting").description.startswith("Counts images")
    assert registry.get("metric", "undocumented").description == ""


def test_two_metrics_reporting_one_key_are_refused(tiny_train, write_spec):
    spec = write_spec({**tiny_train, "epochs": 1, "metrics": ["accuracy", {"name": "accuracy", "params": {"topk": [1]}}]})
    result = _run(spec)
    assert result.exit_code == 1 and "metrics 'accuracy' and 'accuracy' both report 'top1/model'" in result.output


def test_an_edited_plugin_file_gives_its_teacher_a_new_cache_entry(tiny_distill, tmp_path, host):
    from kdzoo.run.teachers import teacher_dir
    from kdzoo.spec import validate_spec

    plugin = tmp_path / "extra.py"
    plugin.write_text("from kdzoo import hookimpl\n")
    spec = {**tiny_distill, "plugins": [str(plugin)], "output_dir": str(tmp_path)}
    before = teacher_dir(validate_spec(spec, host.registry).teachers[0].train)
    plugin.write_text("from kdzoo import hookimpl  # edited\n")
    after = teacher_dir(validate_spec(spec, host.registry).teachers[0].train)
    assert before != after and before.parent == after.parent
