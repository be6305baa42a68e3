"""Behaviour of the kdzoo-models components, built through the plugin registry like the core does."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from kdzoo.api import KdzooError
from kdzoo.host.loading import load_plugins

TINY_VIT_TIMM = {"arch": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 4, "kwargs": {"depth": 2}}
TINY_VIT_HF = {
    "model_type": "vit",
    "image_size": 32,
    "patch_size": 4,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
}


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    # Tiny models on a shared, loaded machine: OpenMP threads contending for cores make
    # each step ~100x slower than running on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def registry():
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KDZOO_LOAD_PLUGINS", "kdzoo-models")
        host = load_plugins()
    assert "kdzoo-models" in host.plugins, host.registry.failures
    return host.registry


def build(registry, name, params=None, num_classes=10, image_size=32):
    return registry.build("model", name, params or {}, num_classes=num_classes, image_size=image_size)


def image_batch(size=32, batch=2, seed=0):
    """What the core feeds a Network: uint8 images scaled to float [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator).float() / 255


def run_with_taps(net, paths, images):
    """Eval-mode logits and the forward-hook outputs of ``paths`` (as the core taps them)."""
    outputs = {}
    handles = [
        net.submodule(path).register_forward_hook(lambda m, a, out, path=path: outputs.__setitem__(path, out))
        for path in paths
    ]
    net.eval()
    try:
        with torch.no_grad():
            logits = net(images)
    finally:
        for handle in handles:
            handle.remove()
    return logits, outputs


def all_tap_paths(net):
    paths = list(net.stages) + list(net.attention)
    if net.embedding:
        paths.append(net.embedding)
    if net.cam:
        paths += [net.cam.features, net.cam.classifier]
    return list(dict.fromkeys(paths))


def assert_cam_consistent(net, images):
    """CAM's premise: the logits are the linear head applied to the average-pooled feature map."""
    logits, taps = run_with_taps(net, [net.cam.features], images)
    features = taps[net.cam.features]
    classifier = net.submodule(net.cam.classifier)
    assert features.ndim == 4 and features.shape[1] == classifier.in_features
    torch.testing.assert_close(classifier(features.mean(dim=(2, 3))), logits, rtol=1e-4, atol=1e-4)


def assert_attention_probs(net, images):
    assert net.attention
    _, taps = run_with_taps(net, net.attention, images)
    for path in net.attention:
        out = taps[path]
        probs = out[1] if isinstance(out, tuple) else out
        assert probs.ndim == 4 and probs.shape[0] == images.shape[0] and probs.shape[-1] == probs.shape[-2], path
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))


# --------------------------------------------------------------------------- plugin contract
def test_hook_module_registers_all_components_without_importing_torch():
    code = (
        "import os, sys\n"
        "os.environ['KDZOO_LOAD_PLUGINS'] = 'kdzoo-models'\n"
        "from kdzoo.host.loading import load_plugins\n"
        "registry = load_plugins().registry\n"
        "assert not registry.failures, registry.failures\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'timm', 'transformers') if m in sys.modules)\n"
        "print(registry.names('model'), heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['cifar-resnet', 'hf', 'timm', 'torchvision'] []"


def test_params_are_validated_before_building(registry):
    for name in ("cifar-resnet", "torchvision", "timm", "hf"):
        component = registry.get("model", name)
        assert component.description
        with pytest.raises(ValidationError):
            component.validate_params({"no_such_field": 1})
    with pytest.raises(ValidationError, match="depth"):
        registry.get("model", "cifar-resnet").validate_params({"depth": 21})
    with pytest.raises(ValidationError, match="num_classes"):
        registry.get("model", "timm").validate_params({"kwargs": {"num_classes": 3}})
    with pytest.raises(ValidationError, match="not model_dir and config"):
        registry.get("model", "hf").validate_params({"model_dir": "x", "config": TINY_VIT_HF})
    with pytest.raises(ValidationError, match="model_type"):
        registry.get("model", "hf").validate_params({"config": {"hidden_size": 8}})


# --------------------------------------------------------------------------- cifar-resnet
def test_cifar_resnet20_logits_size_and_taps(registry):
    net = build(registry, "cifar-resnet", {"depth": 20, "width": 16})
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(0.27e6, rel=0.02)
    assert (net.family, net.input_size, net.embedding) == ("cnn", None, "avgpool")

    images = image_batch()
    logits, taps = run_with_taps(net, all_tap_paths(net), images)
    assert logits.shape == (2, 10)
    assert [tuple(taps[s].shape) for s in net.stages] == [(2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8)]
    assert taps[net.embedding].flatten(1).shape == (2, 64)
    assert_cam_consistent(net, images)


@pytest.mark.parametrize(("depth", "blocks_per_stage"), [(8, 1), (56, 9)])
def test_cifar_resnet_depth_sets_block_count(registry, depth, blocks_per_stage):
    net = build(registry, "cifar-resnet", {"depth": depth, "width": 4})
    assert [len(net.submodule(s)) for s in net.stages] == [blocks_per_stage] * 3


def test_cifar_resnet_declares_its_pre_activations_without_new_parameters(registry):
    net = build(registry, "cifar-resnet", {"depth": 14, "width": 4})  # two blocks per stage
    assert net.pre_activation_stages == ["layer1.1.pre_activation", "layer2.1.pre_activation", "layer3.1.pre_activation"]
    assert net.pre_activation_norms == ["layer1.1.bn2", "layer2.1.bn2", "layer3.1.bn2"]
    assert not any("pre_activation" in key for key in net.state_dict())  # checkpoints are unchanged
    _, taps = run_with_taps(net, net.stages + net.pre_activation_stages, image_batch())
    for stage, pre in zip(net.stages, net.pre_activation_stages):
        assert (taps[pre] < 0).any()  # before the ReLU
        assert torch.equal(torch.relu(taps[pre]), taps[stage])  # the stage's output is its ReLU


def test_cifar_resnet_fits_a_small_batch(registry):
    torch.manual_seed(0)
    net = build(registry, "cifar-resnet", {"depth": 8, "width": 8}, num_classes=4)
    images, labels = image_batch(batch=16, seed=1), torch.arange(16) % 4
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# --------------------------------------------------------------------------- torchvision
def test_torchvision_resnet_taps_and_resize(registry):
    net = build(registry, "torchvision", {"arch": "resnet18", "input_size": 64}, num_classes=7)
    assert net.stages == ["layer1", "layer2", "layer3", "layer4"] and net.input_size == 64
    images = image_batch(32)
    logits, taps = run_with_taps(net, all_tap_paths(net), images)
    assert logits.shape == (2, 7)
    assert tuple(taps["layer1"].shape) == (2, 64, 16, 16)  # 32px images resized to 64 before the body
    assert_cam_consistent(net, images)


def test_torchvision_features_trunk_gets_stages_and_cam(registry):
    net = build(registry, "torchvision", {"arch": "mobilenet_v2"})
    logits, taps = run_with_taps(net, all_tap_paths(net), image_batch())
    assert logits.shape == (2, 10)
    sizes = [taps[s].shape[-1] for s in net.stages]
    assert all(taps[s].ndim == 4 for s in net.stages)
    assert sizes == sorted(set(sizes), reverse=True)  # one stage per resolution, shallow to deep
    assert_cam_consistent(net, image_batch())


# --------------------------------------------------------------------------- timm
def test_timm_cnn_taps(registry):
    net = build(registry, "timm", {"arch": "test_resnet"})
    images = image_batch()
    logits, taps = run_with_taps(net, all_tap_paths(net), images)
    assert logits.shape == (2, 10) and net.family == "cnn"
    assert net.stages and all(taps[s].ndim == 4 for s in net.stages)
    assert taps[net.embedding].shape == (2, net.submodule(net.cam.classifier).in_features)
    assert_cam_consistent(net, images)


def test_timm_vit_attention_taps(registry):
    net = build(registry, "timm", TINY_VIT_TIMM)
    assert (net.family, net.input_size, net.cam) == ("vit", 32, None)
    assert net.attention == ["blocks.0.attn.attn_drop", "blocks.1.attn.attn_drop"]
    images = image_batch()
    logits, taps = run_with_taps(net, all_tap_paths(net), images)
    assert logits.shape == (2, 10)
    assert tuple(taps["blocks.0.attn.attn_drop"].shape) == (2, 3, 65, 65)  # 3 heads, 8x8 patches + class token
    assert all(taps[s].ndim == 3 for s in net.stages)
    assert_attention_probs(net, images)


def test_timm_vit_defaults_to_its_built_resolution(registry):
    net = build(registry, "timm", {"arch": "vit_tiny_patch16_224", "patch_size": 8, "kwargs": {"depth": 1}})
    assert net.input_size == 224
    assert net(image_batch(32, batch=1)).shape == (1, 10)


# --------------------------------------------------------------------------- hf
def test_hf_vit_from_config(registry):
    net = build(registry, "hf", {"config": TINY_VIT_HF}, num_classes=5)
    assert (net.family, net.input_size) == ("vit", 32)
    assert len(net.attention) == len(net.stages) == 2
    images = image_batch()
    logits, taps = run_with_taps(net, all_tap_paths(net), images)
    assert logits.shape == (2, 5)
    assert all(taps[s].shape == (2, 65, 64) for s in net.stages)
    assert_attention_probs(net, images)


def test_hf_from_save_pretrained_directory(registry, tmp_path):
    original = build(registry, "hf", {"config": TINY_VIT_HF}, num_classes=3)
    original.body.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))

    loaded = build(registry, "hf", {"model_dir": str(tmp_path)}, num_classes=3)
    images = image_batch()
    torch.testing.assert_close(loaded.body.eval()(images).logits, original.body.eval()(images).logits)
    assert loaded.mean.flatten().tolist() == [0.5] * 3  # the saved processor's normalisation
    assert_attention_probs(loaded, images)

    # A kdzoo checkpoint of an hf model reloads into the same config.
    save_file({k: v.contiguous() for k, v in original.state_dict().items()}, tmp_path / "trained.safetensors")
    reloaded = build(registry, "hf", {"config": TINY_VIT_HF, "weights": str(tmp_path / "trained.safetensors")}, num_classes=3)
    torch.testing.assert_close(reloaded.eval()(images), original.eval()(images))

    with pytest.raises(KdzooError, match="3 labels.*reset_head"):
        build(registry, "hf", {"model_dir": str(tmp_path)}, num_classes=4)
    fine_tuned = build(registry, "hf", {"model_dir": str(tmp_path), "reset_head": True}, num_classes=4)
    assert fine_tuned(images).shape == (2, 4)


def test_hf_user_errors(registry, tmp_path):
    with pytest.raises(KdzooError, match="exactly one"):
        build(registry, "hf", {})
    with pytest.raises(KdzooError, match="not found"):
        build(registry, "hf", {"model_dir": str(tmp_path / "missing")})
    with pytest.raises(KdzooError, match="'vitt'; close matches: vit"):
        build(registry, "hf", {"config": {**TINY_VIT_HF, "model_type": "vitt"}})
    with pytest.raises(KdzooError, match="did you mean 'hidden_size'"):
        build(registry, "hf", {"config": {**TINY_VIT_HF, "hiden_size": 32}})


# --------------------------------------------------------------------------- weights & errors
def test_weights_round_trip_plain_checkpoint_and_pickle(registry, tmp_path):
    params = {"depth": 8, "width": 4}
    source = build(registry, "cifar-resnet", params)
    plain = {k: v.contiguous() for k, v in source.body.state_dict().items()}
    save_file(plain, tmp_path / "plain.safetensors")
    # A kdzoo checkpoint: Network.state_dict() ("body.") beside the losses' tensors, in a run directory.
    checkpoint = {k: v.contiguous() for k, v in source.state_dict().items()}
    assert checkpoint and all(k.startswith("body.") for k in checkpoint)
    (tmp_path / "run").mkdir()
    save_file({**checkpoint, "losses.0.connector.weight": torch.ones(2, 2)}, tmp_path / "run" / "model.safetensors")
    torch.save({"state_dict": plain, "epoch": 3}, tmp_path / "trained.pt")

    images = image_batch()
    expected = source.eval()(images)
    for file in ("plain.safetensors", "run/model.safetensors", "run", "trained.pt"):
        loaded = build(registry, "cifar-resnet", {**params, "weights": str(tmp_path / file)})
        torch.testing.assert_close(loaded.eval()(images), expected, msg=file)


def test_mismatched_weights_name_the_problem(registry, tmp_path):
    wider = build(registry, "cifar-resnet", {"depth": 8, "width": 8})
    save_file({k: v.contiguous() for k, v in wider.body.state_dict().items()}, tmp_path / "wide.safetensors")
    with pytest.raises(KdzooError, match=r"another shape \(conv1.weight: file \(8, 3, 3, 3\) vs model \(4, 3, 3, 3\)"):
        build(registry, "cifar-resnet", {"depth": 8, "width": 4, "weights": str(tmp_path / "wide.safetensors")})
    with pytest.raises(KdzooError, match="missing from the file.*layer1.1"):
        build(registry, "cifar-resnet", {"depth": 14, "width": 8, "weights": str(tmp_path / "wide.safetensors")})
    with pytest.raises(KdzooError, match="not found"):
        build(registry, "cifar-resnet", {"weights": str(tmp_path / "nope.safetensors")})
    # Pickles are read with weights_only=True: anything but tensors and plain containers is refused.
    torch.save({"state_dict": wider.body.state_dict(), "args": argparse.Namespace(lr=0.1)}, tmp_path / "unsafe.pt")
    with pytest.raises(KdzooError, match="cannot read weights file"):
        build(registry, "cifar-resnet", {"depth": 8, "width": 8, "weights": str(tmp_path / "unsafe.pt")})


def test_pretrained_weights_keep_backbone_and_replace_head(registry, tmp_path):
    source = build(registry, "timm", {"arch": "test_resnet"}, num_classes=7)
    save_file({k: v.contiguous() for k, v in source.body.state_dict().items()}, tmp_path / "in7.safetensors")
    weights = str(tmp_path / "in7.safetensors")

    with pytest.raises(KdzooError, match="fc.weight.*pretrained: true"):
        build(registry, "timm", {"arch": "test_resnet", "weights": weights})
    net = build(registry, "timm", {"arch": "test_resnet", "weights": weights, "pretrained": True})
    loaded, saved = net.body.state_dict(), source.body.state_dict()
    for key in saved:
        if not key.startswith("fc."):
            torch.testing.assert_close(loaded[key], saved[key], msg=key)
    assert loaded["fc.weight"].shape == (10, saved["fc.weight"].shape[1])


@pytest.mark.parametrize(
    ("name", "arch", "suggestion"), [("torchvision", "resnet19", "resnet18"), ("timm", "resnet19", "resnet18")]
)
def test_unknown_arch_suggests_close_names(registry, name, arch, suggestion):
    with pytest.raises(KdzooError, match=f"unknown .*'{arch}'.*{suggestion}"):
        build(registry, name, {"arch": arch})


def test_torchvision_pretrained_true_without_a_file_asks_for_a_weights_name(registry):
    # pretrained: true keeps meaning "the local file is pretrained"; torchvision's own weights are named.
    with pytest.raises(ValidationError, match="pretrained: DEFAULT or pretrained: IMAGENET1K_V1"):
        build(registry, "torchvision", {"pretrained": True})


def test_hub_revision_needs_hub_weights(registry):
    with pytest.raises(ValidationError, match="revision pins hub weights"):
        build(registry, "timm", {"arch": "test_resnet", "revision": "main"})
    with pytest.raises(ValidationError, match="give one of model_id, model_dir, config, not model_id and config"):
        build(registry, "hf", {"model_id": "org/name", "config": TINY_VIT_HF})
