"""Pretrained weights from the hubs, read from fake caches this test builds on disk (no network):
timm and transformers through the Hugging Face hub cache layout, torchvision through
TORCH_HOME's checkpoints folder; what the run's manifest records; the refusal of
`kdzoo validate` / `kdzoo run` when a weight is missing offline; and `kdzoo fetch`."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from pydantic import ValidationError
from safetensors.torch import save_file

from kdzoo.cli import cli
from kdzoo.errors import KdzooError, PluginError
from kdzoo.host.registry import Registry, make_register

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"
NEWER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
TIMM_ARCH, TIMM_REPO = "test_resnet.r160_in1k", "timm/test_resnet.r160_in1k"
MISSING_TIMM_ARCH, MISSING_TIMM_REPO = "test_vit.r160_in1k", "timm/test_vit.r160_in1k"
HF_REPO = "kdzoo-tests/tiny-vit"
TV_ARCH = "shufflenet_v2_x0_5"  # small, with one weights member: IMAGENET1K_V1 (also its DEFAULT)
TV_WEIGHTS = "ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1"
CLASSES = 4  # the dataset's class count (conftest's tiny synthetic data); every hub model has 1000 or 7
TINY_VIT_CONFIG = dict(
    image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
)


@pytest.fixture(scope="module")
def registry():
    from kdzoo.host.loading import load_plugins

    return load_plugins().registry


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty hub caches under tmp_path, the machine offline.

    huggingface_hub reads HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE once, when it is
    imported (already done by now), so its ``constants`` are set as well as the
    environment; timm and transformers read them from there at each call. torch.hub
    reads TORCH_HOME at each call.
    """
    from huggingface_hub import constants

    hf_home, torch_home = tmp_path / "hf", tmp_path / "torch"
    for name, value in {"HF_HOME": hf_home, "HF_HUB_CACHE": hf_home / "hub", "TORCH_HOME": torch_home}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return SimpleNamespace(hub=hf_home / "hub", checkpoints=torch_home / "hub" / "checkpoints")


def put_snapshot(hub: Path, repo_id: str, files: dict[str, Path], commit: str = FAKE_COMMIT) -> Path:
    """What huggingface_hub leaves after a download: models--ORG--NAME/refs/main and snapshots/COMMIT/."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        shutil.copyfile(source, snapshot / name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def timm_release(tmp_path) -> tuple[dict[str, Path], dict[str, torch.Tensor]]:
    """A 1000-class test_resnet as timm's hub repositories hold it: model.safetensors + config.json."""
    import timm

    torch.manual_seed(1)
    state = timm.create_model("test_resnet", num_classes=1000).state_dict()
    folder = tmp_path / "release-timm"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    config = {"architecture": "test_resnet", "num_classes": 1000, "pretrained_cfg": {"tag": "r160_in1k", "classifier": "fc"}}
    (folder / "config.json").write_text(json.dumps(config))
    return {"model.safetensors": folder / "model.safetensors", "config.json": folder / "config.json"}, state


def hf_release(tmp_path) -> tuple[dict[str, Path], dict[str, torch.Tensor]]:
    """A tiny 7-label ViT written by save_pretrained, with a preprocessor config of its own normalisation."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(2)
    model = ViTForImageClassification(ViTConfig(**TINY_VIT_CONFIG, num_labels=7))
    folder = tmp_path / "release-hf"
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3}))
    files = {name: folder / name for name in ("config.json", "model.safetensors", "preprocessor_config.json")}
    return files, model.state_dict()


def torchvision_release(tmp_path) -> tuple[str, Path, dict[str, torch.Tensor]]:
    """A 1000-class shufflenet of this test's own, saved under the file name torchvision's URL has."""
    from torchvision.models import get_weight, shufflenet_v2_x0_5

    torch.manual_seed(3)
    state = shufflenet_v2_x0_5(num_classes=1000).state_dict()
    url = get_weight(TV_WEIGHTS).url
    file = tmp_path / "release-tv" / os.path.basename(url)
    file.parent.mkdir()
    torch.save(state, file)
    return url, file, state


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(registry, name, params):
    return registry.build("model", name, params, num_classes=CLASSES, image_size=32)


# ----------------------------------------------------------------------------- loading from the caches
def test_timm_loads_hub_weights_from_the_cache(registry, caches, tmp_path):
    files, saved = timm_release(tmp_path)
    put_snapshot(caches.hub, TIMM_REPO, files)
    net = build(registry, "timm", {"arch": TIMM_ARCH, "pretrained": True})
    loaded = net.body.state_dict()
    torch.testing.assert_close(loaded["conv1.0.weight"], saved["conv1.0.weight"], rtol=0, atol=0)
    torch.testing.assert_close(loaded["layer1.0.conv1.weight"], saved["layer1.0.conv1.weight"], rtol=0, atol=0)
    assert loaded["fc.weight"].shape == (CLASSES, saved["fc.weight"].shape[1])  # a new head for the dataset
    assert net.weights_source == {"hub": "huggingface", "id": TIMM_REPO, "revision": FAKE_COMMIT, "file": "model.safetensors"}


def test_timm_hub_revision_pins_a_snapshot(registry, caches, tmp_path):
    first, saved = timm_release(tmp_path)
    put_snapshot(caches.hub, TIMM_REPO, first)
    newer = {name: tmp_path / f"newer-{name}" for name in first}
    for name, path in first.items():
        shutil.copyfile(path, newer[name])
    save_file({k: torch.zeros_like(v).contiguous() for k, v in saved.items()}, newer["model.safetensors"])
    put_snapshot(caches.hub, TIMM_REPO, newer, commit=NEWER_COMMIT)  # main moved on to all-zero weights

    latest = build(registry, "timm", {"arch": TIMM_ARCH, "pretrained": True})
    assert latest.weights_source["revision"] == NEWER_COMMIT
    assert latest.body.state_dict()["conv1.0.weight"].abs().sum() == 0
    pinned = build(registry, "timm", {"arch": TIMM_ARCH, "pretrained": True, "revision": FAKE_COMMIT})
    torch.testing.assert_close(pinned.body.state_dict()["conv1.0.weight"], saved["conv1.0.weight"], rtol=0, atol=0)
    assert pinned.weights_source["revision"] == pinned.weights_source["requested_revision"] == FAKE_COMMIT


def test_hf_loads_a_hub_model_from_the_cache(registry, caches, tmp_path):
    files, saved = hf_release(tmp_path)
    put_snapshot(caches.hub, HF_REPO, files)
    for params in ({"model_id": HF_REPO}, {"model_id": HF_REPO, "revision": FAKE_COMMIT}):
        net = build(registry, "hf", params)
        loaded = net.body.state_dict()
        key = "vit.embeddings.patch_embeddings.projection.weight"
        torch.testing.assert_close(loaded[key], saved[key], rtol=0, atol=0)
        assert loaded["classifier.weight"].shape == (CLASSES, TINY_VIT_CONFIG["hidden_size"])
        assert net.mean.flatten().tolist() == [0.5] * 3 and net.std.flatten().tolist() == [0.25] * 3
        assert net.weights_source["revision"] == FAKE_COMMIT and net.weights_source["id"] == HF_REPO
    assert net.weights_source["requested_revision"] == FAKE_COMMIT


def test_torchvision_loads_a_weights_enum_from_torch_home(registry, caches, tmp_path):
    url, release, saved = torchvision_release(tmp_path)
    caches.checkpoints.mkdir(parents=True)
    shutil.copyfile(release, caches.checkpoints / release.name)
    net = build(registry, "torchvision", {"arch": TV_ARCH, "pretrained": "DEFAULT"})
    loaded = net.body.state_dict()
    torch.testing.assert_close(loaded["conv1.0.weight"], saved["conv1.0.weight"], rtol=0, atol=0)
    torch.testing.assert_close(loaded["stage2.0.branch1.0.weight"], saved["stage2.0.branch1.0.weight"], rtol=0, atol=0)
    assert loaded["fc.weight"].shape == (CLASSES, 1024)
    # DEFAULT is recorded as the member it stood for, with the file's own hash.
    assert net.weights_source == {"hub": "torchvision", "id": TV_WEIGHTS, "url": url, "sha256": sha256(release)}


def test_torchvision_weights_names_are_checked(registry, caches):
    with pytest.raises(KdzooError, match=r"unknown weights 'IMAGENET9K_V1'; allowed: IMAGENET1K_V1, DEFAULT"):
        build(registry, "torchvision", {"arch": TV_ARCH, "pretrained": "IMAGENET9K_V1"})
    params = registry.get("model", "torchvision").params
    with pytest.raises(ValidationError, match="torchvision weights name such as IMAGENET1K_V1"):
        params.model_validate({"pretrained": "imagenet"})
    with pytest.raises(ValidationError, match="pretrained: DEFAULT"):
        params.model_validate({"pretrained": True})  # true without a file: say how to name torchvision's
    with pytest.raises(ValidationError, match="not both"):
        params.model_validate({"pretrained": "DEFAULT", "weights": "w.safetensors"})
    assert params.model_validate({"pretrained": True, "weights": "w.safetensors"}).pretrained is True


def test_a_missing_weight_offline_is_a_clear_error_when_building(registry, caches):
    with pytest.raises(KdzooError, match=rf"{MISSING_TIMM_REPO} are not in the Hugging Face hub cache .*HF_HUB_OFFLINE=1"):
        build(registry, "timm", {"arch": MISSING_TIMM_ARCH, "pretrained": True})
    with pytest.raises(KdzooError, match=rf"{TV_WEIGHTS} .* not in the torch hub cache .*offline"):
        build(registry, "torchvision", {"arch": TV_ARCH, "pretrained": "IMAGENET1K_V1"})


# ----------------------------------------------------------------------------- runs and the CLI
def hub_train_spec(tiny_train, model):
    return {**tiny_train, "epochs": 1, "model": model}


def test_the_manifest_records_the_initial_weights(registry, caches, tmp_path, tiny_train, tiny_distill, write_spec):
    files, _ = timm_release(tmp_path)
    put_snapshot(caches.hub, TIMM_REPO, files)
    spec = write_spec(hub_train_spec(tiny_train, {"name": "timm", "params": {"arch": TIMM_ARCH, "pretrained": True}}))
    result = CliRunner().invoke(cli, ["run", str(spec), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "run" / "model.json").read_text())
    assert manifest["initial_weights"] == {"hub": "huggingface", "id": TIMM_REPO, "revision": FAKE_COMMIT, "file": "model.safetensors"}

    # A checkpoint teacher is rebuilt from its model reference before its weights load: checked too.
    shutil.rmtree(caches.hub)
    distill = {**tiny_distill, "teachers": [{"name": "old", "checkpoint": str(tmp_path / "run")}]}
    result = CliRunner().invoke(cli, ["validate", str(write_spec(distill, name="distill.yaml"))])
    assert result.exit_code == 2 and "teachers[old].checkpoint: timm model" in result.output


def test_validate_and_run_refuse_a_weight_missing_offline(caches, tmp_path, tiny_distill, write_spec):
    timm_teacher = {"name": "timm", "params": {"arch": MISSING_TIMM_ARCH, "pretrained": True, "img_size": 32}}
    tiny_distill["teachers"] = [{"name": "t_vit", "train": {"model": timm_teacher, "epochs": 1}}]
    spec = write_spec(tiny_distill)
    for command in ("validate", "run"):
        result = CliRunner().invoke(cli, [command, str(spec), "--set", "seed=3"])
        assert result.exit_code == 2, result.output
        message = " ".join(result.output.split())  # click wraps nothing, but be safe about newlines
        assert "teachers[t_vit].train.model" in message
        assert f"timm model '{MISSING_TIMM_ARCH}'" in message and MISSING_TIMM_REPO in message
        assert "HF_HUB_OFFLINE=1" in message
        assert f"run `kdzoo fetch {spec} --set=seed=3` where there is internet" in message
    assert not (tmp_path / "runs").exists()  # refused before any work: no teacher, no run directory


def test_every_arm_of_a_grid_is_checked(caches, tiny_train, write_spec):
    model = {"name": "torchvision", "params": {"arch": TV_ARCH, "pretrained": "IMAGENET1K_V1"}}
    spec = write_spec({**hub_train_spec(tiny_train, model), "matrix": {"seed": [0, 1]}})
    result = CliRunner().invoke(cli, ["validate", str(spec)])
    assert result.exit_code == 2
    assert "[matrix arm seed0] model (and 1 more place)" in result.output and TV_WEIGHTS in result.output


def fake_downloads(monkeypatch, remote_hf: dict[str, dict[str, Path]], remote_urls: dict[str, Path]) -> list[str]:
    """Replace the plugin's two download functions by copies from ``remote_*`` into the cache
    layout the real ones write; returns the log of what was downloaded."""
    from huggingface_hub import constants

    import kdzoo_models.hub
    import kdzoo_models.torch_hub

    downloads: list[str] = []

    def download_snapshot(repo_id, *, revision, allow_patterns):
        assert revision is None
        wanted = {n: p for n, p in remote_hf[repo_id].items() if any(fnmatch.fnmatch(n, pat) for pat in allow_patterns)}
        downloads.extend(f"{repo_id}/{name}" for name in wanted)
        return put_snapshot(Path(constants.HF_HUB_CACHE), repo_id, wanted)

    def download_url(url, destination):
        downloads.append(url)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(remote_urls[url], destination)

    monkeypatch.setattr(kdzoo_models.hub, "download_snapshot", download_snapshot)
    monkeypatch.setattr(kdzoo_models.torch_hub, "download_url", download_url)
    return downloads


def test_fetch_fills_the_caches_and_reports_each_weight(caches, monkeypatch, tmp_path, tiny_distill, write_spec):
    timm_files, _ = timm_release(tmp_path)
    hf_files, _ = hf_release(tmp_path)
    url, release, _ = torchvision_release(tmp_path)
    downloads = fake_downloads(monkeypatch, {TIMM_REPO: timm_files, HF_REPO: hf_files}, {url: release})

    tiny_distill["student"] = {"model": {"name": "torchvision", "params": {"arch": TV_ARCH, "pretrained": "IMAGENET1K_V1"}}}
    tiny_distill["teachers"] = [
        {"name": "t_timm", "train": {"model": {"name": "timm", "params": {"arch": TIMM_ARCH, "pretrained": True}}}},
        {"name": "t_hf", "train": {"model": {"name": "hf", "params": {"model_id": HF_REPO}}}},
        {"name": "t_small", "train": {"model": {"name": "cifar-resnet", "params": {"depth": 8}}}},
    ]
    spec = write_spec({**tiny_distill, "matrix": {"seed": [0, 1]}})
    assert CliRunner().invoke(cli, ["validate", str(spec)]).exit_code == 2  # offline, nothing cached yet

    result = CliRunner().invoke(cli, ["fetch", str(spec)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    snapshot = lambda repo: str(caches.hub / f"models--{repo.replace('/', '--')}" / "snapshots" / FAKE_COMMIT)  # noqa: E731
    assert lines[:3] == [
        f"torchvision ([matrix arm seed0] student.model (and 1 more place)): torchvision {TV_WEIGHTS} "
        f"@ sha256 {sha256(release)} in {caches.checkpoints / release.name} [downloaded]",
        f"timm ([matrix arm seed0] teachers[t_timm].train.model (and 1 more place)): huggingface {TIMM_REPO} "
        f"@ {FAKE_COMMIT} in {snapshot(TIMM_REPO)} [downloaded]",
        f"hf ([matrix arm seed0] teachers[t_hf].train.model (and 1 more place)): huggingface {HF_REPO} "
        f"@ {FAKE_COMMIT} in {snapshot(HF_REPO)} [downloaded]",
    ]
    assert "3 pretrained weights, 3 downloaded, 0 already cached" in lines[3]
    assert sorted(downloads) == sorted(
        [url, f"{TIMM_REPO}/model.safetensors", f"{TIMM_REPO}/config.json"] + [f"{HF_REPO}/{name}" for name in hf_files]
    )

    validated = CliRunner().invoke(cli, ["validate", str(spec)])  # still offline: now found in the caches
    assert validated.exit_code == 0, validated.output
    again = CliRunner().invoke(cli, ["fetch", str(spec)])
    assert again.exit_code == 0 and again.output.count("[already cached]") == 3 and len(downloads) == 6


def test_fetch_says_when_nothing_needs_fetching(caches, tiny_distill, write_spec):
    spec = write_spec(tiny_distill)
    result = CliRunner().invoke(cli, ["fetch", str(spec)])
    assert result.exit_code == 0 and "no model needs pretrained weights from a hub; nothing to fetch" in result.output


# ----------------------------------------------------------------------------- the registration argument
def test_register_takes_a_weights_function_for_models_only():
    registry = Registry()
    make_register(registry, "model", "p")("net", "m:f", weights="m:locate")
    assert registry.get("model", "net").weights == "m:locate"
    with pytest.raises(PluginError, match="weights= is for models"):
        make_register(registry, "loss", "p")("l", "m:f", weights="m:locate")
    with pytest.raises(PluginError, match="weights must be a callable or 'module:attribute'"):
        make_register(registry, "model", "p")("other", "m:f", weights="no-colon")


def test_the_weights_check_stays_torch_free_for_specs_without_hub_weights(tiny_distill):
    """`kdzoo validate` imports the weights functions; they import the heavy libraries only when needed."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from kdzoo.host.loading import load_plugins\n"
        "from kdzoo.host.weights import check_weights_available\n"
        "from kdzoo.spec import validate_spec\n"
        "import kdzoo_models.hub, kdzoo_models.torch_hub\n"
        "registry = load_plugins().registry\n"
        f"spec = validate_spec({tiny_distill!r}, registry)\n"
        "spec.student.model.name, spec.student.model.params = 'timm', {'arch': 'test_resnet'}\n"
        "assert check_weights_available([('arm', spec)], registry) == []\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'timm', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
