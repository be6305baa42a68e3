"""The worked examples of docs/plugins.md run: each code block is loaded as a plugin file.

A block marked ``<!-- example: KIND FILE.py -->`` is written to a temporary folder as
FILE.py, loaded through the plugin-file route (as ``plugins: [FILE.py]`` in a spec
loads it), and its component is exercised the way the engine uses it; the block
marked ``<!-- example: spec -->`` is the spec that uses all of them. So an example
that stops matching the API fails here.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kdzoo.api import DistillBatch, EvalBatch, ImageData, Loss, Metric, Network, tapped
from kdzoo.authoring.check import check_plugin
from kdzoo.host.loading import PluginHost, load_plugin_file, new_manager
from kdzoo.run.checkpoint import file_sha256
from kdzoo.host.registry import Registry
from kdzoo.testing import make_distill_batch, make_eval_batch, random_images, tiny_network_pair

PLUGINS_MD = Path(__file__).parent.parent / "docs" / "plugins.md"
KINDS = ("model", "dataset", "augmentation", "loss", "metric")
_BLOCK = re.compile(r"<!-- example: (\w+)(?: ([\w.-]+\.py))? -->\n```(python|yaml)\n(.*?)\n```", re.S)


def doc_examples() -> dict[str, tuple[str | None, str]]:
    """kind -> (file name, code) of every marked block of docs/plugins.md."""
    found: dict[str, tuple[str | None, str]] = {}
    for kind, filename, _language, code in _BLOCK.findall(PLUGINS_MD.read_text()):
        assert kind not in found, f"docs/plugins.md marks two '{kind}' examples"
        found[kind] = (filename or None, code + "\n")
    return found


EXAMPLES = doc_examples()


def test_plugins_md_has_one_example_of_each_kind_and_a_spec():
    assert sorted(EXAMPLES) == sorted([*KINDS, "spec"])
    for kind in KINDS:
        filename, _ = EXAMPLES[kind]
        assert filename, f"the {kind} example needs a file name in its marker: <!-- example: {kind} NAME.py -->"


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("doc_examples")
    for kind in KINDS:
        filename, code = EXAMPLES[kind]
        (folder / filename).write_text(code)
    return folder


def _file_host(path: Path) -> PluginHost:
    """A host holding only the plugin file ``path``, loaded as ``plugins: [path]`` loads it."""
    host = PluginHost(new_manager(), Registry())
    load_plugin_file(host, path)
    assert host.registry.failures == {}, host.registry.failures
    return host


@pytest.fixture(scope="module")
def components(example_dir):
    """kind -> (host, component): the one component each example registers."""
    found = {}
    for kind in KINDS:
        host = _file_host(example_dir / EXAMPLES[kind][0])
        registered = list(host.registry.components.values())
        assert [c.kind for c in registered] == [kind], f"the {kind} example must register exactly one {kind}"
        found[kind] = (host, registered[0])
    return found


def test_plugin_files_are_recorded_with_their_hash(example_dir, components):
    for kind in KINDS:
        host, _ = components[kind]
        path = (example_dir / EXAMPLES[kind][0]).resolve()
        assert host.plugin_files() == [{"path": str(path), "sha256": file_sha256(path)}]


def test_model_example(components):
    _, component = components["model"]
    network = component.build(num_classes=7, image_size=32)
    assert isinstance(network, Network) and network.num_classes == 7
    assert network.stages and network.embedding and network.cam is not None
    paths = [*network.stages, network.embedding, network.cam.features, network.cam.classifier]
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    network.eval()
    with torch.no_grad(), tapped(network, paths) as features:
        logits = network(images)
    assert logits.shape == (3, 7) and bool(torch.isfinite(logits).all())
    assert set(features) == set(paths)
    for path in network.stages:
        assert features[path].ndim == 4 and features[path].shape[0] == 3
    assert features[network.cam.features].ndim == 4
    assert features[network.cam.classifier].shape == (3, 7)
    assert features[network.embedding].flatten(1).shape[0] == 3  # pooled: (B, D) once flattened
    wider = component.build({"width": 4}, num_classes=3, image_size=16)
    assert wider(torch.rand(2, 3, 16, 16)).shape == (2, 3)


def test_dataset_example(components, tmp_path):
    _, component = components["dataset"]
    data = component.build({"train_size": 24, "test_size": 10, "image_size": 16}, seed=0, cache_dir=tmp_path)
    assert isinstance(data, ImageData)
    assert data.train_images.shape == (24, 3, 16, 16) and data.test_images.shape == (10, 3, 16, 16)
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64
    assert data.num_classes == len(data.classes) >= 2
    assert int(data.train_labels.max()) < data.num_classes
    again = component.build({"train_size": 24, "test_size": 10, "image_size": 16}, seed=0, cache_dir=tmp_path)
    assert torch.equal(data.train_images, again.train_images), "the same seed must give the same data"
    default = component.build(seed=1, cache_dir=tmp_path)
    assert default.image_size == 32


def test_augmentation_example(components):
    _, component = components["augmentation"]
    augmentation = component.build()
    images = random_images(6)
    original = images.clone()
    out = augmentation(images, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(images, original), "the augmentation changed its input in place"
    again = augmentation(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, again), "the same generator seed must give the same batch"
    always = component.build({"p": 1.0})(images, torch.Generator().manual_seed(0))
    assert torch.equal(always, 255 - images)


def test_loss_example(components):
    _, component = components["loss"]
    loss = component.build()
    assert isinstance(loss, Loss)
    student, teacher = tiny_network_pair()
    batch = make_distill_batch(loss, student, teacher, teacher_requires_grad=True)  # taps and setup, as the engine does
    assert isinstance(batch, DistillBatch)
    assert len(loss.connectors) == 1 and sum(p.numel() for p in loss.parameters()) > 0, "setup built no trainable connector"
    value = loss(batch)
    assert value.ndim == 0 and math.isfinite(value.detach().item())
    value.backward()
    assert batch.images.grad is not None and float(batch.images.grad.abs().sum()) > 0, "no gradient reaches the student"
    assert all(p.grad is not None for p in loss.parameters()), "the connector is not trained"
    assert batch.teachers[0].logits.grad is None
    assert all(t.grad is None for t in batch.teachers[0].features.values()), "gradient reached a teacher feature"
    # two teachers: one connector each, the mean of both pairs
    second = tiny_network_pair(seed=5)[1]
    two = component.build({"connector": "conv3x3"})
    batch = make_distill_batch(two, student, [teacher, second])
    assert len(two.connectors) == 2
    assert math.isfinite(two(batch).detach().item())


def _figures(metric: Metric, networks, teachers, student) -> dict[str, float]:
    metric.reset()
    for seed in (0, 1):
        batch = make_eval_batch(metric, networks, teachers=teachers, student=student, seed=seed)
        assert isinstance(batch, EvalBatch)
        metric.update(batch)
    return metric.compute()


def test_metric_example(components):
    _, component = components["metric"]
    metric = component.build()
    student, teacher = tiny_network_pair()
    networks = {"student": student, "t1": teacher}
    assert metric.taps(networks) == {"student": [student.embedding], "t1": [teacher.embedding]}
    figures = _figures(metric, networks, ("t1",), "student")
    assert {"embed_norm/student", "embed_norm/t1", "argmax_agree/student~t1", "argmax_agree/student~ensemble"} <= set(figures)
    assert all(isinstance(v, float) and math.isfinite(v) for v in figures.values()), figures
    assert all(0 <= figures[k] <= 1 for k in figures if k.startswith("argmax_agree/"))
    train_run = _figures(component.build(), {"model": student}, (), "model")  # one role, no teachers: no pairs
    assert set(train_run) == {"embed_norm/model"} and math.isfinite(train_run["embed_norm/model"])


@pytest.mark.parametrize("kind", KINDS)
def test_example_passes_kdzoo_plugins_check(kind, example_dir, monkeypatch):
    """What the page tells authors to run on a plugin file: ``PYTHONPATH=. kdzoo plugins check NAME``."""
    module = Path(EXAMPLES[kind][0]).stem
    monkeypatch.syspath_prepend(str(example_dir))
    monkeypatch.delitem(sys.modules, module, raising=False)
    report = check_plugin(module)
    assert report.ok, report.to_text()


def test_spec_example_runs_with_the_plugin_files(example_dir, tmp_path):
    """The page's spec, shrunk to seconds, runs through ``kdzoo run`` with the example files."""
    _, text = EXAMPLES["spec"]
    spec = yaml.safe_load(text)
    assert sorted(spec["plugins"]) == sorted(EXAMPLES[kind][0] for kind in KINDS)
    spec.update({"name": "doc-examples", "threads": 1, "precision": "fp32", "device": "cpu", "batch_size": 16,
                 "output_dir": str(tmp_path / "runs")})
    spec["data"]["params"].update({"train_size": 48, "test_size": 16})
    spec["teachers"][0]["train"]["epochs"] = 1
    spec_path = example_dir / "spec.yaml"  # plugin paths are relative to the spec file
    spec_path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "kdzoo", "run", str(spec_path), "--out", str(out), "--quiet"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = json.loads((out / "model.json").read_text())
    recorded = {Path(entry["path"]).name: entry["sha256"] for entry in manifest["plugin_files"]}
    assert recorded == {EXAMPLES[k][0]: file_sha256(example_dir / EXAMPLES[k][0]) for k in KINDS}
    assert "test/embed_norm/student" in manifest["metrics"]
    summary = json.loads((out / "summary.json").read_text())
    assert "test/argmax_agree/student~t1" in summary["final"]
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert "test/embed_norm/t1" in epochs[-1]
