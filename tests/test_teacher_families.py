"""Teachers from other model families (timm ViT, HF ViT from a config) in a real distil run,
with feature losses tapping module paths in both networks."""

from __future__ import annotations

import pytest

from kdzoo.run.runner import run_single
from kdzoo.spec import validate_spec

TIMM_VIT = {"name": "timm", "params": {"arch": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8, "kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2}}}
HF_VIT = {
    "name": "hf",
    "params": {"config": {"model_type": "vit", "image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}},
}


@pytest.mark.parametrize("teacher_model", [TIMM_VIT, HF_VIT], ids=["timm-vit", "hf-vit"])
def test_vit_teacher_distils_a_cnn_student(host, tiny_distill, tmp_path, teacher_model):
    tiny_distill.update(epochs=1, output_dir=str(tmp_path / "runs"))
    tiny_distill["teachers"] = [{"name": "vit", "train": {"model": teacher_model, "epochs": 1}}]
    tiny_distill["losses"] = [{"name": "ce", "weight": 1.0}, {"name": "kd", "weight": 1.0}, {"name": "rkd", "weight": 1.0}]
    tiny_distill["metrics"] = ["accuracy", "fidelity", {"name": "attention-iou", "params": {"overlay_images": 0}}]
    spec = validate_spec(tiny_distill, host.registry)
    summary = run_single(spec, host, tmp_path / "student", log=lambda _: None, progress=True)
    final = summary["final"]
    assert 0 <= final["test/top1/vit"] <= 1 and 0 <= final["test/fidelity/student~vit"] <= 1
    assert "test/attn_iou/student~vit" in final  # CAM for the CNN, attention rollout for the ViT
    assert summary["connector_parameters"] == 0  # RKD compares distances: no connector


def test_feature_loss_with_connector_between_cnn_families(host, tiny_distill, tmp_path):
    """FitNet between a CIFAR ResNet student and a torchvision ResNet teacher: a 1x1-conv connector
    bridges the channel mismatch, is trained with the student and saved in its checkpoint."""
    from kdzoo.run import checkpoint as ckpt

    tiny_distill.update(epochs=1, output_dir=str(tmp_path / "runs"))
    tiny_distill["teachers"] = [{"name": "tv", "train": {"model": {"name": "torchvision", "params": {"arch": "resnet18"}}, "epochs": 1}}]
    tiny_distill["losses"] = [{"name": "ce"}, {"name": "fitnet", "weight": 1.0}]
    summary = run_single(validate_spec(tiny_distill, host.registry), host, tmp_path / "s", log=lambda _: None, progress=True)
    assert summary["connector_parameters"] > 0
    saved = ckpt.load_tensors(tmp_path / "s" / "model.safetensors")
    assert any(k.startswith("losses.1.") for k in saved)
