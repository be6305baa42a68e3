"""`kdzoo plugins check`: a good plugin passes; each kind of broken plugin fails with a
message that names what is wrong. Plugins are modules written into tmp_path."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from kdzoo import PLUGIN_API_VERSION
import torch

from kdzoo.authoring.check import FAIL, PASS, SKIP, check_plugin

HEADER = """\
from __future__ import annotations
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from kdzoo import hookimpl
from kdzoo.api import ImageData, Loss, Metric
from kdzoo.errors import KdzooError
from kdzoo.testing import tiny_network

KDZOO_PLUGIN_API = (1, 0)

class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(2.0, gt=0)

class TemperedKL(Loss):
    def pair(self, student, teacher, batch, index):
        t = self.params.temperature
        s = F.log_softmax(student.logits / t, dim=1)
        q = F.log_softmax(teacher.logits.detach() / t, dim=1)
        return F.kl_div(s, q, reduction="batchmean", log_target=True) * t * t
"""

GOOD_PLUGIN = """
class Agreement(Metric):
    def reset(self):
        self.agree, self.total = 0, 0
    def update(self, batch):
        for role in batch.teachers:
            self.agree += int((batch.logits[role].argmax(1) == batch.logits[batch.student].argmax(1)).sum())
            self.total += len(batch.targets)
    def compute(self):
        return {"agreement/student": self.agree / self.total} if self.total else {}

def build_jitter(params):
    def jitter(images, generator):
        noise = torch.randint(-3, 4, images.shape, generator=generator)
        return (images.int() + noise).clamp(0, 255).to(torch.uint8)
    return jitter

class DataParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train_size: int = Field(1000, ge=2)
    test_size: int = Field(100, ge=2)
    image_size: int = 16

def build_noise_data(params, seed, cache_dir):
    g = torch.Generator().manual_seed(seed)
    def split(n):
        return torch.randint(0, 256, (n, 3, params.image_size, params.image_size), dtype=torch.uint8, generator=g), torch.arange(n) % 3
    return ImageData(*split(params.train_size), *split(params.test_size), classes=["a", "b", "c"])

def build_folder_data(params, seed, cache_dir):
    raise KdzooError("good-folder needs params.root")

@hookimpl
def register_losses(register):
    register("good-kl", TemperedKL, params=Params, description="tempered KL")

@hookimpl
def register_metrics(register):
    register("good-agreement", Agreement, description="top-1 agreement")

@hookimpl
def register_augmentations(register):
    register("good-jitter", build_jitter, description="pixel noise")

@hookimpl
def register_models(register):
    register("good-tiny", lambda params, num_classes, image_size: tiny_network(num_classes=num_classes), description="tiny CNN")

@hookimpl
def register_datasets(register):
    register("good-noise", build_noise_data, params=DataParams, description="random pixels")
    register("good-folder", build_folder_data, description="needs a folder")
"""

# name -> (module body after HEADER, words the failure must contain)
BROKEN_PLUGINS = {
    "misspelt_hook": (
        """
        @hookimpl
        def register_lossses(register):
            register("bad-kl", TemperedKL, params=Params, description="x")
        """,
        ["register_lossses", "did you mean 'register_losses'"],
    ),
    "wrong_hook_argument": (
        """
        @hookimpl
        def register_losses(registr):
            registr("bad-kl", TemperedKL, params=Params, description="x")
        """,
        ["argument 'registr' is not in the hookspec register_losses(register)", "did you mean 'register'"],
    ),
    "unmarked_hook": (
        """
        def register_losses(register):
            register("bad-kl", TemperedKL, params=Params, description="x")
        """,
        ["register_losses() is named like a hook but not marked @hookimpl"],
    ),
    "duplicate_within_plugin": (
        """
        @hookimpl
        def register_losses(register):
            register("bad-twice", TemperedKL, params=Params, description="x")
            register("bad-twice", TemperedKL, params=Params, description="y")
        """,
        ["loss 'bad-twice' is registered twice"],
    ),
    "duplicate_of_builtin": (
        """
        @hookimpl
        def register_losses(register):
            register("kd", TemperedKL, params=Params, description="x")
        """,
        ["loss 'kd' is registered twice", "plugin 'kdzoo-losses'"],
    ),
    "params_without_defaults": (
        """
        class NoDefaults(BaseModel):
            model_config = ConfigDict(extra="forbid")
            temperature: float

        @hookimpl
        def register_losses(register):
            register("bad-kl", TemperedKL, params=NoDefaults, description="x")
        """,
        ["params model defaults do not validate", "NoDefaults.temperature: Field required"],
    ),
    "params_accepting_unknown_keys": (
        """
        class Loose(BaseModel):
            temperature: float = 2.0

        @hookimpl
        def register_losses(register):
            register("bad-kl", TemperedKL, params=Loose, description="x")
        """,
        ["Loose accepts unknown keys", "extra='forbid'"],
    ),
    "no_description": (
        """
        def build(params):
            return TemperedKL(params)

        @hookimpl
        def register_losses(register):
            register("bad-kl", build, params=Params)
        """,
        ["loss 'bad-kl'", "no description"],
    ),
    "factory_not_importable": (
        """
        @hookimpl
        def register_losses(register):
            register("bad-kl", "no_such_module_xyz:Loss", params=Params, description="x")
        """,
        ["'no_such_module_xyz:Loss' cannot be imported"],
    ),
    "loss_returning_nan": (
        """
        class NaNLoss(TemperedKL):
            def pair(self, student, teacher, batch, index):
                return super().pair(student, teacher, batch, index) * float("nan")

        @hookimpl
        def register_losses(register):
            register("bad-nan", NaNLoss, params=Params, description="x")
        """,
        ["loss 'bad-nan'", "returned nan"],
    ),
    "loss_not_scalar": (
        """
        class PerSample(TemperedKL):
            def forward(self, batch):
                return (batch.student.logits - batch.teachers[0].logits.detach()).pow(2).sum(1)

        @hookimpl
        def register_losses(register):
            register("bad-per-sample", PerSample, params=Params, description="x")
        """,
        ["shape (8,), not a scalar"],
    ),
    "loss_reaching_teacher": (
        """
        class Undetached(Loss):
            def pair(self, student, teacher, batch, index):
                return F.mse_loss(student.logits, teacher.logits)

        @hookimpl
        def register_losses(register):
            register("bad-mse", Undetached, params=Params, description="x")
        """,
        ["gradient reaches the teacher's logits", "detach"],
    ),
    "loss_ignoring_student": (
        """
        class Constant(Loss):
            def pair(self, student, teacher, batch, index):
                return teacher.logits.detach().mean()

        @hookimpl
        def register_losses(register):
            register("bad-constant", Constant, params=Params, description="x")
        """,
        ["no gradient reaches the student's input images"],
    ),
    "augmentation_changing_dtype": (
        """
        @hookimpl
        def register_augmentations(register):
            register("bad-float", lambda params: (lambda images, generator: images.float() / 255), description="x")
        """,
        ["augmentation 'bad-float'", "turned a uint8 batch into torch.float32"],
    ),
    "augmentation_ignoring_generator": (
        """
        def build(params):
            return lambda images, generator: images.flip(3) if torch.rand(()) < 0.5 else images.flip(2)

        @hookimpl
        def register_augmentations(register):
            register("bad-global-rng", build, description="x")
        """,
        ["different images for the same generator seed"],
    ),
    "model_with_wrong_classes": (
        """
        @hookimpl
        def register_models(register):
            register("bad-tiny", lambda params, num_classes, image_size: tiny_network(num_classes=num_classes + 1), description="x")
        """,
        ["model 'bad-tiny'", "gave logits (2, 11) instead of (2, 10)"],
    ),
    "unpickling": (
        """
        def load_teacher_weights(path):
            return torch.load(path, map_location="cpu")

        @hookimpl
        def register_losses(register):
            register("bad-kl", TemperedKL, params=Params, description="x")
        """,
        ["kdzoo_check_unpickling.py:", "torch.load() without weights_only=True unpickles"],
    ),
    "api_too_new": (
        """
        KDZOO_PLUGIN_API = (99, 0)

        @hookimpl
        def register_losses(register):
            register("bad-kl", TemperedKL, params=Params, description="x")
        """,
        [f"needs kdzoo plugin API 99.0, this kdzoo provides {'.'.join(map(str, PLUGIN_API_VERSION))}"],
    ),
    "no_hooks": (
        """
        VALUE = 1
        """,
        ["implements no kdzoo hook"],
    ),
}


@pytest.fixture
def write_plugin(tmp_path, monkeypatch):
    """Write a plugin module into tmp_path (importable) and forget it afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(name: str, body: str) -> str:
        module = f"kdzoo_check_{name}"
        (tmp_path / f"{module}.py").write_text(HEADER + textwrap.dedent(body))
        written.append(module)
        return module

    yield write
    for module in written:
        sys.modules.pop(module, None)


def lines(report, status):
    return [f"{r.subject}: {r.detail}" for r in report.results if r.status == status]


def test_a_good_plugin_of_every_kind_passes(write_plugin):
    rng_before = torch.get_rng_state()
    report = check_plugin(write_plugin("good", GOOD_PLUGIN))
    assert report.ok, report.to_text()
    smoked = {r.subject for r in report.results if r.check == "smoke" and r.status == PASS}
    assert smoked == {"loss 'good-kl'", "metric 'good-agreement'", "augmentation 'good-jitter'", "model 'good-tiny'", "dataset 'good-noise'"}
    # A dataset whose defaults need files is skipped with the reason, not failed.
    assert lines(report, SKIP) == ["dataset 'good-folder': not run: its default params need configuration (good-folder needs params.root)"]
    assert "train_size=20" in next(r.detail for r in report.results if r.subject == "dataset 'good-noise'" and r.check == "smoke")
    assert torch.equal(torch.get_rng_state(), rng_before)  # smoke runs leave the caller's random state alone


@pytest.mark.parametrize("name", sorted(BROKEN_PLUGINS))
def test_a_broken_plugin_fails_naming_the_problem(write_plugin, name):
    body, words = BROKEN_PLUGINS[name]
    report = check_plugin(write_plugin(name, body))
    assert not report.ok
    failures = " | ".join(lines(report, FAIL))
    for word in words:
        assert word in failures, f"{word!r} not in: {failures}"
    assert "FAILED" in report.to_text()


def test_a_plugin_that_cannot_be_imported_fails_at_import(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "kdzoo_check_import_error.py").write_text("import no_such_dependency_xyz\n")
    report = check_plugin("kdzoo_check_import_error")
    assert [(r.check, r.status) for r in report.results] == [("import", FAIL)]
    assert "No module named 'no_such_dependency_xyz'" in report.results[0].detail


def test_an_unknown_target_gets_a_did_you_mean():
    report = check_plugin("kdzoo-metrix")
    assert not report.ok
    assert "did you mean 'kdzoo-metrics'?" in report.results[0].detail


@pytest.mark.parametrize("target", ["kdzoo-metrics", "kdzoo_metrics"])
def test_an_installed_plugin_is_found_by_distribution_or_module_name(target):
    report = check_plugin(target)
    assert report.ok, report.to_text()
    assert [p.name for p in report.plugins] == ["kdzoo-metrics"]
    assert report.plugins[0].distribution == "kdzoo-metrics" and report.plugins[0].api == "1.0"
    assert "accuracy" in report.plugins[0].components["metric"]


def test_the_report_renders_as_text_and_json(write_plugin):
    report = check_plugin(write_plugin("report_nan", BROKEN_PLUGINS["loss_returning_nan"][0]))
    data = json.loads(report.to_json())
    assert data["ok"] is False and data["counts"][FAIL] == 1
    assert {"plugin", "check", "subject", "status", "detail"} <= set(data["results"][0])
    text = report.to_text()
    assert text.splitlines()[0] == "kdzoo plugins check kdzoo_check_report_nan"
    assert any(line.lstrip().startswith("FAIL  smoke") and "bad-nan" in line for line in text.splitlines())


@pytest.mark.parametrize("distribution", ["kdzoo-models", "kdzoo-data", "kdzoo-losses", "kdzoo-feature-losses", "kdzoo-metrics"])
def test_every_builtin_plugin_passes_the_check_it_asks_of_third_parties(distribution):
    report = check_plugin(distribution)
    assert report.ok, report.to_text()
