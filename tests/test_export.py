"""``kdzoo export``: the ONNX graph gives the logits kdzoo's own model gives (any batch size,
normalisation inside), the library formats reload in their library with equal logits, and
what is not a finished run is refused with exit code 2."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import kdzoo
from kdzoo import rundir
from kdzoo.cli import cli
from tests.conftest import TINY_TRAIN

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TINY_TIMM = {"name": "timm", "params": {"arch": "test_resnet"}}
# Built for 40 px: kdzoo resizes the 32 px images inside the model (and the ONNX graph).
TINY_HF = {"name": "hf", "params": {"config": {"model_type": "vit", "image_size": 40, "patch_size": 8, "hidden_size": 16,
                                               "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}}}


def train(folder, model=None, epochs=2):
    spec = {**copy.deepcopy(TINY_TRAIN), "epochs": epochs, "output_dir": str(folder / "runs")}
    if model is not None:
        spec["model"] = model
    return kdzoo.run_spec(spec, out=folder / "run", log=None).run_dir


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A tiny trained cifar-resnet and kdzoo's own model of it."""
    run_dir = train(tmp_path_factory.mktemp("cifar"))
    return run_dir, kdzoo.load_model(run_dir)


def images(count: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def kdzoo_logits(model, batch):
    with torch.no_grad():
        return model(batch).numpy()


def export(*args: str):
    return CliRunner().invoke(cli, ["export", *map(str, args)])


def test_onnx_logits_equal_kdzoos_for_any_batch_size(student, tmp_path):
    run_dir, model = student
    out = tmp_path / "student.onnx"
    result = export(run_dir, "--onnx", out)
    assert result.exit_code == 0, result.output
    assert f"-> {out} (ONNX opset 18, dynamic batch)" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.onnx"]  # no temporary file left behind
    session = ort.InferenceSession(str(out))
    (graph_input,), (graph_output,) = session.get_inputs(), session.get_outputs()
    assert (graph_input.name, graph_output.name) == ("images", "logits")
    assert not isinstance(graph_input.shape[0], int) and graph_input.shape[1:] == [3, 32, 32]
    for count in (2, 5, 1):  # 2 is the size exported with
        batch = images(count, seed=count)
        onnx_logits = session.run(["logits"], {"images": batch.numpy()})[0]
        assert onnx_logits.shape == (count, 4)
        assert abs(onnx_logits - kdzoo_logits(model, batch)).max() < 1e-4
    # normalisation is inside: raw [0, 1] images, not normalised ones, give kdzoo's logits
    batch = images(3)
    normalised = model.preprocess(batch).numpy()
    assert abs(session.run(["logits"], {"images": normalised})[0] - kdzoo_logits(model, batch)).max() > 1e-2
    saved = onnx.load(str(out))
    assert [o.version for o in saved.opset_import if o.domain in ("", "ai.onnx")] == [18]
    meta = {p.key: p.value for p in saved.metadata_props}
    manifest = json.loads((run_dir / rundir.MANIFEST_FILE).read_text())
    assert json.loads(meta["classes"]) == manifest["classes"] and meta["image_size"] == "32"
    assert json.loads(meta["kdzoo_model"])["name"] == "cifar-resnet"


def test_large_weights_go_to_a_data_file_beside_the_graph(student, tmp_path, monkeypatch):
    from kdzoo.run import export as core

    run_dir, model = student
    monkeypatch.setattr(core, "EXTERNAL_DATA_BYTES", 0)  # as if the weights were over the limit
    out = tmp_path / "big.onnx"
    result = export(run_dir, "--onnx", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]  # the staging folder is gone
    graph = onnx.load(str(out), load_external_data=False)
    external = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and {e.value for t in external for e in t.external_data if e.key == "location"} == {"big.onnx.data"}
    batch = images(3)
    onnx_logits = ort.InferenceSession(str(out)).run(["logits"], {"images": batch.numpy()})[0]
    assert abs(onnx_logits - kdzoo_logits(model, batch)).max() < 1e-4


def test_plain_library_format_rebuilds_the_same_module(student, tmp_path, host):
    from kdzoo.host.build import build_model

    run_dir, model = student
    folder = tmp_path / "plain"
    result = export(run_dir, "--library-format", folder)
    assert result.exit_code == 0, result.output
    assert "(kdzoo format)" in result.output and sorted(p.name for p in tmp_path.iterdir()) == ["plain"]
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "kdzoo-model/1" and config["num_classes"] == 4 and config["input_size"] == 32
    assert config["mean"] == pytest.approx([0.4914, 0.4822, 0.4465]) and config["std"] == pytest.approx([0.2470, 0.2435, 0.2616])
    rebuilt = build_model(host.registry, config["model"]["name"], config["model"]["params"], num_classes=4, image_size=32)
    rebuilt.body.load_state_dict(load_file(folder / "model.safetensors"))
    body = rebuilt.body.eval()
    batch = images(4)
    mean, std = torch.tensor(config["mean"]).view(1, 3, 1, 1), torch.tensor(config["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(body((batch - mean) / std), model(batch), atol=1e-6)
    again = export(run_dir, "--library-format", folder)  # not empty now
    assert again.exit_code == 2 and "exists and is not an empty folder" in again.output


def test_timm_library_format_reloads_in_timm(tmp_path):
    import timm
    from timm.data import resolve_data_config

    run_dir = train(tmp_path, TINY_TIMM, epochs=1)
    model = kdzoo.load_model(run_dir)
    folder = tmp_path / "timm-model"
    result = export(run_dir, "--library-format", folder)
    assert result.exit_code == 0, result.output
    assert "(timm format)" in result.output
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    reloaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert reloaded.num_classes == 4
    assert json.loads((folder / "config.json").read_text())["label_names"] == model_classes(run_dir)
    data = resolve_data_config(model=reloaded)
    mean, std = torch.tensor(data["mean"]).view(1, 3, 1, 1), torch.tensor(data["std"]).view(1, 3, 1, 1)
    assert torch.allclose(mean, model.mean) and torch.allclose(std, model.std)
    batch = images(3)
    size = data["input_size"][-1]
    resized = torch.nn.functional.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False) if size != 32 else batch
    with torch.no_grad():
        assert torch.allclose(reloaded((resized - mean) / std), model(batch), atol=1e-5)


def test_hf_library_format_reloads_in_transformers_and_its_onnx_resizes_inside(tmp_path):
    from transformers import AutoModelForImageClassification

    run_dir = train(tmp_path, TINY_HF, epochs=1)
    model = kdzoo.load_model(run_dir)
    assert model.input_size == 40
    folder = tmp_path / "hf-model"
    result = export(run_dir, "--library-format", folder, "--onnx", tmp_path / "vit.onnx")
    assert result.exit_code == 0, result.output
    assert "(transformers format)" in result.output
    reloaded = AutoModelForImageClassification.from_pretrained(folder, local_files_only=True).eval()
    assert reloaded.config.id2label == dict(enumerate(model_classes(run_dir)))
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 40, "width": 40}
    mean = torch.tensor(processor["image_mean"]).view(1, 3, 1, 1)
    std = torch.tensor(processor["image_std"]).view(1, 3, 1, 1)
    batch = images(3)
    resized = torch.nn.functional.interpolate(batch, size=(40, 40), mode="bilinear", align_corners=False)
    with torch.no_grad():
        assert torch.allclose(reloaded(pixel_values=(resized - mean) / std).logits, model(batch), atol=1e-5)
    session = ort.InferenceSession(str(tmp_path / "vit.onnx"))  # 32 px in: the resize is in the graph
    assert abs(session.run(["logits"], {"images": batch.numpy()})[0] - kdzoo_logits(model, batch)).max() < 1e-4


def model_classes(run_dir) -> list[str]:
    return json.loads((run_dir / rundir.MANIFEST_FILE).read_text())["classes"]


def test_what_is_not_a_finished_run_is_refused(student, tmp_path):
    run_dir, _ = student
    missing = export(tmp_path / "nothing", "--onnx", tmp_path / "x.onnx")
    assert missing.exit_code == 2 and "run directory not found" in missing.output
    empty = export(tmp_path, "--onnx", tmp_path / "x.onnx")
    assert empty.exit_code == 2 and "is not a finished kdzoo run directory" in empty.output
    grid = tmp_path / "grid"
    (grid / rundir.ARMS_DIR / "seed0").mkdir(parents=True)
    refused = export(grid, "--onnx", tmp_path / "x.onnx")
    assert refused.exit_code == 2 and "is a grid, not one run" in refused.output
    nothing_asked = export(run_dir)
    assert nothing_asked.exit_code == 2 and "give --onnx OUT.onnx, --library-format DIR, or both" in nothing_asked.output
    wrong_suffix = export(run_dir, "--onnx", tmp_path / "x.bin")
    assert wrong_suffix.exit_code == 2 and "must end in .onnx" in wrong_suffix.output
    assert not list(tmp_path.glob("x*")), "a refused export wrote a file"

