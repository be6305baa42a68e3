"""SimKD's student predicts through its projector and the teacher's reused classifier (the
authors' DefangChen/SimKD ``helper/loops.py``): in evaluation, in its checkpoint, and once
reloaded (``kdzoo.load_model``, ``kdzoo export``); ``head: student`` keeps its own head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import kdzoo
from kdzoo import rundir
from kdzoo.api import KdzooError
from kdzoo.host.build import build_model
from kdzoo.host.loading import load_plugins
from kdzoo.run.checkpoint import load_tensors

DATA = {"name": "synthetic-shapes", "params": {"train_size": 64, "test_size": 40, "num_classes": 4}}


def simkd_spec(tmp_path: Path, **params) -> dict:
    return {
        "kind": "distill", "name": "simkd", "epochs": 2, "batch_size": 32, "precision": "fp32", "threads": 1,
        "data": DATA, "metrics": ["accuracy", {"name": "calibration", "params": {"bins": [1]}}], "student": {"model": {"name": "cifar-resnet", "params": {"depth": 8, "width": 4}}},
        "teachers": [{"name": "t1", "train": {"model": {"name": "cifar-resnet", "params": {"depth": 8, "width": 8}}, "epochs": 1}}],
        "losses": [{"name": "simkd", "params": params}], "output_dir": str(tmp_path / "runs"),
    }


@pytest.fixture(scope="module")
def simkd_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("simkd")
    result = kdzoo.run_spec(simkd_spec(tmp), out=tmp / "out", log=None)
    return result.run_dirs["simkd"]


def by_hand(run_dir: Path, images: torch.Tensor) -> torch.Tensor:
    """teacher_classifier(avgpool(projector(student's layer3))), from the checkpoints' tensors:
    the student's body and head tensors, the teacher's own classifier from *its* checkpoint."""
    host = load_plugins()
    tensors = load_tensors(run_dir / rundir.MODEL_FILE)
    student = build_model(host.registry, "cifar-resnet", {"depth": 8, "width": 4}, num_classes=4, image_size=32).eval()
    student.body.load_state_dict({k[len("body."):]: v for k, v in tensors.items() if k.startswith("body.")})
    features = {}
    student.body.layer3.register_forward_hook(lambda m, i, o: features.__setitem__("layer3", o))
    student(images)
    x = features["layer3"]  # (B, 16, 8, 8): the teacher's layer3 is 8 x 8 too, no pooling
    head = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    for conv, norm, padding in (("0", "1", 0), ("3", "4", 1), ("6", "7", 0)):  # conv -> BN (eval) -> ReLU, three times
        x = F.conv2d(x, head[f"projector.layers.{conv}.weight"], padding=padding)
        x = F.batch_norm(x, head[f"projector.layers.{norm}.running_mean"], head[f"projector.layers.{norm}.running_var"],
                         head[f"projector.layers.{norm}.weight"], head[f"projector.layers.{norm}.bias"], eps=1e-5)
        x = torch.relu(x)
    summary = json.loads((run_dir / rundir.SUMMARY_FILE).read_text())
    teacher = load_tensors(Path(summary["teachers"]["t1"]["checkpoint"]) / rundir.MODEL_FILE)
    return F.linear(x.mean(dim=(2, 3)), teacher["body.fc.weight"], teacher["body.fc.bias"])


def test_the_saved_student_predicts_through_the_projector_and_the_teachers_classifier(simkd_run):
    manifest = json.loads((simkd_run / rundir.MANIFEST_FILE).read_text())
    assert manifest["head"]["loss"] == "simkd" and manifest["head"]["tap"] == "layer3"
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = kdzoo.load_model(simkd_run)
    with torch.no_grad():
        assert_close(model(images), by_hand(simkd_run, images), rtol=1e-5, atol=1e-5)
        own = model.body(model.preprocess(images))  # the student's own (untrained) classifier predicts otherwise
        assert not torch.allclose(own, model(images), atol=1e-3)
    summary = json.loads((simkd_run / rundir.SUMMARY_FILE).read_text())
    assert summary["head_parameters"] > 0


def test_the_student_was_evaluated_through_the_head(simkd_run):
    from kdzoo.run.data import load_data
    from kdzoo.spec import DataSpec

    host = load_plugins()
    data = load_data(DataSpec.model_validate(DATA, context={"registry": host.registry}), host.registry)
    model = kdzoo.load_model(simkd_run)
    with torch.no_grad():
        probabilities = model(data.test_images.float() / 255).double().softmax(dim=1)
    confidence, predicted = probabilities.max(dim=1)
    top1 = (predicted == data.test_labels).double().mean().item()
    final = kdzoo.load_summary(simkd_run)["final"]
    assert final["test/top1/student"] == pytest.approx(top1)
    # ECE over one bin: |accuracy - mean confidence|, a figure of the logits themselves
    assert final["test/ece1/student"] == pytest.approx(abs(top1 - confidence.mean().item()), abs=1e-6)


def test_the_head_exports_to_onnx_but_not_to_a_library_format(simkd_run, tmp_path):
    from kdzoo.run.export import export_library_format, export_onnx, load_network

    network, manifest = load_network(simkd_run, kdzoo.python_api._load_host)
    with pytest.raises(KdzooError, match="predicts through the head of loss 'simkd'"):
        export_library_format(network, manifest, tmp_path / "library")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = export_onnx(network, manifest, tmp_path / "simkd.onnx")
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    logits = ort.InferenceSession(str(path)).run(None, {"images": images.numpy()})[0]
    assert_close(torch.from_numpy(logits), by_hand(simkd_run, images), rtol=1e-4, atol=1e-4)


def test_head_student_keeps_the_students_own_classifier(tmp_path):
    result = kdzoo.run_spec({**simkd_spec(tmp_path, head="student"), "epochs": 1}, out=tmp_path / "out", log=None)
    run_dir = result.run_dirs["simkd"]
    assert "head" not in json.loads((run_dir / rundir.MANIFEST_FILE).read_text())
    assert not any(k.startswith("head.") for k in load_tensors(run_dir / rundir.MODEL_FILE))
    model = kdzoo.load_model(run_dir)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert_close(model(images), model.body(model.preprocess(images)))


def test_head_teacher_needs_one_teacher(harness):
    s = torch.randn(4, 8, 4, 4)
    run = harness.on_features("simkd", {"s": s}, [{"t": torch.randn(4, 6, 4, 4)}, {"t": torch.randn(4, 6, 4, 4)}])
    with pytest.raises(KdzooError, match="this run has 2 teacher"):
        run.loss.student_head()
    assert harness.build("simkd", {"head": "student"}).student_head() is None
