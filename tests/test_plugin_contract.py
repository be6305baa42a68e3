"""`kdzoo plugins check` enforces the plugin contract as `kdzoo run` does: clashes with
any installed plugin, defaults that break their own bounds, non-default params
(declared `examples` and `--params`), and the shapes a loss's `pair` and `forward`
return. Each plugin is a throw-away module written as a third party would write it."""

from __future__ import annotations

import importlib.metadata as md
import sys
import textwrap

import pytest
from click.testing import CliRunner

from kdzoo.authoring.check import FAIL, PASS, check_plugin
from kdzoo.cli import cli
from kdzoo.errors import KdzooError
from kdzoo.host import loading

HEADER = """\
from __future__ import annotations
from typing import ClassVar, Literal
import torch
import torch.nn.functional as F
from pydantic import Field
from kdzoo import hookimpl
from kdzoo.api import Loss
from kdzoo.api.params import Params

KDZOO_PLUGIN_API = (1, 0)

class KLParams(Params):
    temperature: float = Field(4.0, gt=0)

class TemperedKL(Loss):
    def pair(self, student, teacher, batch, index):
        t = self.params.temperature
        s = F.log_softmax(student.logits / t, dim=1)
        q = F.log_softmax(teacher.logits.detach() / t, dim=1)
        return F.kl_div(s, q, reduction="batchmean", log_target=True) * t * t

class ModeParams(Params):
    mode: Literal["good", "bad"] = "good"

class Modal(Loss):
    \"\"\"Fine off its defaults only: mode='bad' returns one value per sample and class.\"\"\"
    def pair(self, student, teacher, batch, index):
        error = (student.logits - teacher.logits.detach()).pow(2)
        return error.mean() if self.params.mode == "good" else error
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """``plugin(module, body, entry_point=None)``: write a plugin module (importable); with
    ``entry_point`` it is also installed, next to the real plugins (built-ins included)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(loading.ALLOW_LIST_ENV, raising=False)
    installed: list[md.EntryPoint] = []
    real = md.entry_points
    monkeypatch.setattr(loading.md, "entry_points", lambda group: [*real(group=group), *[e for e in installed if e.group == group]])
    written: list[str] = []

    def write(module: str, body: str, entry_point: str | None = None) -> str:
        (tmp_path / f"{module}.py").write_text(HEADER + textwrap.dedent(body))
        sys.modules.pop(module, None)
        written.append(module)
        if entry_point is not None:
            installed.append(md.EntryPoint(entry_point, module, "kdzoo"))
        return entry_point or module

    yield write
    for module in written:
        sys.modules.pop(module, None)


def results(report, status, check=None):
    return {r.subject: r.detail for r in report.results if r.status == status and check in (None, r.check)}


# ----------------------------------------------------------------------------- clashes
def test_a_clash_with_an_installed_builtin_names_both_plugins(plugin, monkeypatch):
    target = plugin("kdzoo_contract_clash", """
        @hookimpl
        def register_losses(register):
            register("kd", TemperedKL, params=KLParams, description="my own kd")
            register("contract-kl", TemperedKL, params=KLParams, description="a fresh name")
        """, entry_point="kdzoo-contract-clash")
    # Found even when the allow-list would not load the built-in: any installed plugin counts.
    monkeypatch.setenv(loading.ALLOW_LIST_ENV, "kdzoo-contract-clash")
    report = check_plugin(target)
    assert not report.ok
    failed = results(report, FAIL)
    assert list(failed) == ["loss 'kd'"], report.to_text()
    assert "loss 'kd' is registered twice" in failed["loss 'kd'"]
    assert "loss 'kd' is also registered by plugin 'kdzoo-losses' (built-in)" in failed["loss 'kd'"]
    assert "refuses plugin 'kdzoo-contract-clash'" in failed["loss 'kd'"]
    assert "loss 'contract-kl'" in results(report, PASS, "smoke")


def test_a_clash_with_a_plugin_that_loads_after_it_is_reported_too(plugin):
    # kdzoo loads 'aaa-...' first and refuses 'zzz-...': checking 'aaa-...' must still see the clash.
    plugin("kdzoo_contract_late", """
        @hookimpl
        def register_losses(register):
            register("contract-shared", TemperedKL, params=KLParams, description="the late one")
        """, entry_point="zzz-contract-late")
    target = plugin("kdzoo_contract_early", """
        @hookimpl
        def register_losses(register):
            register("contract-shared", TemperedKL, params=KLParams, description="the early one")
        """, entry_point="aaa-contract-early")
    failed = results(check_plugin(target), FAIL)
    assert "loss 'contract-shared' is also registered by plugin 'zzz-contract-late'" in failed["loss 'contract-shared'"]
    assert "refuses plugin 'zzz-contract-late'" in failed["loss 'contract-shared'"]


# ----------------------------------------------------------------------------- params models
@pytest.mark.parametrize("base", ["Params", "StrictModel"])  # validate_default=True, or pydantic's default (False)
def test_a_default_that_breaks_its_own_bound_fails(plugin, base):
    target = plugin(f"kdzoo_contract_bound_{base.lower()}", f"""
        from pydantic import BaseModel, ConfigDict

        class StrictModel(BaseModel):
            model_config = ConfigDict(extra="forbid")

        class Bounded({base}):
            factor: float = Field(2, ge=4)

        @hookimpl
        def register_losses(register):
            register("contract-bounded", TemperedKL, params=Bounded, description="factor defaults below its bound")
        """)
    report = check_plugin(target)
    assert not report.ok
    detail = results(report, FAIL, "register")["loss 'contract-bounded'"]
    assert "params model defaults do not validate" in detail
    assert "the default factor=2 breaks its own bound (Input should be greater than or equal to 4)" in detail
    assert not results(report, PASS, "smoke")  # never run with params kdzoo would refuse


def test_specname_hooks_register_as_kdzoo_calls_them(plugin):
    target = plugin("kdzoo_contract_specname", """
        @hookimpl(specname="register_losses")
        def losses(register):
            register("contract-specname", TemperedKL, params=KLParams, description="registered via specname")
        """)
    report = check_plugin(target)
    assert report.ok, report.to_text()
    assert "loss 'contract-specname'" in results(report, PASS, "smoke")


# ----------------------------------------------------------------------------- non-default params
MODAL = """
    @hookimpl
    def register_losses(register):
        register("contract-modal", Modal, params=ModeParams, description="breaks off its defaults")
        register("contract-kl", TemperedKL, params=KLParams, description="tempered KL")
    """


@pytest.fixture
def kdzoo_check():
    runner = CliRunner()
    return lambda *args: runner.invoke(cli, ["plugins", "check", *args])


def test_params_options_run_a_component_off_its_defaults(plugin, kdzoo_check):
    target = plugin("kdzoo_contract_modal", MODAL)
    plain = kdzoo_check(target)
    assert plain.exit_code == 0, plain.output
    broken = kdzoo_check(target, "--params", "contract-modal.mode=bad", "--params", "contract-kl.temperature=8")
    assert broken.exit_code == 1, broken.output
    failing = [line for line in broken.output.splitlines() if line.startswith("  FAIL  ")]
    assert len(failing) == 1 and "loss 'contract-modal' with mode='bad' (--params)" in failing[0], broken.output
    assert "returned shape (8, 10)" in failing[0]
    assert any("PASS  smoke" in line and "loss 'contract-kl' with temperature=8 (--params)" in line for line in broken.output.splitlines())


@pytest.mark.parametrize(
    ("option", "words"),
    [
        ("contract-modl.mode=bad", ["registers no component named 'contract-modl'", "did you mean 'contract-modal'?"]),
        ("contract-modal.mode=ugly", ["--params for loss 'contract-modal'", "ModeParams.mode", "given 'ugly'"]),
        ("contract-modal.colour=red", ["ModeParams.colour: Extra inputs are not permitted"]),
        ("contract-modal=bad", ["expected NAME.KEY=VALUE"]),
    ],
)
def test_bad_params_options_are_a_clean_error(plugin, kdzoo_check, option, words):
    result = kdzoo_check(plugin("kdzoo_contract_modal", MODAL), "--params", option)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # an error message, not a traceback
    for word in words:
        assert word in result.output
    with pytest.raises(KdzooError):
        check_plugin("kdzoo_contract_modal", params=[option])


def test_declared_examples_are_smoke_run(plugin):
    target = plugin("kdzoo_contract_examples", """
        class ExampleModes(ModeParams):
            examples: ClassVar[list[dict]] = [{"mode": "bad"}]

        @hookimpl
        def register_losses(register):
            register("contract-registered", Modal, params=ModeParams, description="x", examples=[{"mode": "bad"}])
            register("contract-classvar", Modal, params=ExampleModes, description="x")
        """)
    report = check_plugin(target)
    assert not report.ok
    failed = results(report, FAIL)
    assert set(failed) == {"loss 'contract-registered' with mode='bad'", "loss 'contract-classvar' with mode='bad'"}, report.to_text()
    assert {"loss 'contract-registered'", "loss 'contract-classvar'"} <= set(results(report, PASS, "smoke"))


# ----------------------------------------------------------------------------- what a loss returns
def test_a_pair_that_is_not_per_sample_fails_naming_the_loss(plugin):
    target = plugin("kdzoo_contract_pair", """
        class PerClass(Loss):
            def pair(self, student, teacher, batch, index):
                return (student.logits - teacher.logits.detach()).pow(2)  # (B, C): the mean would hide it

        @hookimpl
        def register_losses(register):
            register("contract-per-class", PerClass, description="x")
        """)
    detail = results(check_plugin(target), FAIL, "smoke")["loss 'contract-per-class'"]
    assert "loss 'contract-per-class'" in detail and "failed in forward" in detail
    assert "pair returned shape (8, 10); it must return a scalar or one value per sample (8,)" in detail


def test_a_forward_that_is_not_scalar_fails_naming_the_loss(plugin):
    target = plugin("kdzoo_contract_forward", """
        class Unreduced(Loss):
            def forward(self, batch):
                return (batch.student.logits - batch.teachers[0].logits.detach()).pow(2)

        @hookimpl
        def register_losses(register):
            register("contract-unreduced", Unreduced, description="x")
        """)
    detail = results(check_plugin(target), FAIL, "smoke")["loss 'contract-unreduced'"]
    assert detail.startswith("loss 'contract-unreduced' returned a tensor of shape (8, 10), not a scalar")


def test_a_factory_returning_the_wrong_type_fails_as_kdzoo_run_refuses_it(plugin):
    target = plugin("kdzoo_contract_type", """
        @hookimpl
        def register_losses(register):
            register("contract-module", lambda params: torch.nn.Linear(2, 2), description="not a Loss")
        """)
    detail = results(check_plugin(target), FAIL, "smoke")["loss 'contract-module'"]
    assert detail == "loss 'contract-module' (plugin 'kdzoo_contract_type') returned Linear, not a kdzoo.api.Loss"


def test_a_metric_whose_state_cannot_be_reduced_fails_the_check(plugin):
    target = plugin("kdzoo_contract_list_state", """
        from kdzoo.api import Metric, role_key

        class PerBatch(Metric):
            \"\"\"Keeps a Python list of per-batch sizes: not a sum over processes.\"\"\"

            def reset(self):
                self.sizes = []

            def update(self, batch):
                self.sizes.append(batch.targets.shape[0])

            def compute(self):
                return {role_key("batches", "model"): float(len(self.sizes))}

        @hookimpl
        def register_metrics(register):
            register("per-batch", PerBatch, description="keeps a list")
        """)
    detail = results(check_plugin(target), FAIL, "smoke")["metric 'per-batch'"]
    assert "reduce() for multi-process evaluation: PerBatch.sizes (list) is not a sum of per-rank parts" in detail
