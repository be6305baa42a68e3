"""Registration through the plugin host, default taps, and setup + forward on real tiny networks."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.testing import assert_close

from kdzoo.api import Loss
from kdzoo.api.connectors import count_parameters
from kdzoo.host.loading import load_plugins
from kdzoo_feature_losses import LOSSES

NAMES = sorted(LOSSES)
EXPECTED = {
    "fitnet", "at", "sp", "cc", "rkd", "pkt", "vid", "nst", "ft", "ab", "fsp", "crd", "reviewkd", "ofd", "simkd", "ickd", "kdsvd",
    "mgd", "cwd", "srd", "pefd", "fcfd",
}
# fcfd runs the networks from a stage to the logits and needs stages that follow one another and
# a cam head, which the tiny CNNs here lack (pre-activation stage taps): tested in test_fcfd.py.
RUNS_NETWORKS = {"fcfd"}
DEFAULT_TAPS = {
    "second_stage": {"fitnet"},  # of the tiny CNNs' two stages: stage2 (see test_reference_conventions.py)
    "last_stage": {"sp", "ft", "simkd", "ickd", "mgd", "cwd"},
    "all_stages": {"at", "fsp", "kdsvd", "vid", "nst", "fcfd"},
    # the tiny CNNs declare no pre-activation stages: these fall back to the stages
    "all_stages_pre_activation": {"ab", "ofd"},
    "stages_and_embedding": {"reviewkd"},  # mdistiller's ReviewKD: the stages plus the pooled feature
    "embedding": {"cc", "rkd", "pkt", "crd", "srd", "pefd"},
}


def test_all_losses_register_and_build(host):
    assert not host.registry.failures
    assert set(host.registry.names("loss")) >= EXPECTED and set(NAMES) == EXPECTED
    for name in NAMES:
        component = host.registry.get("loss", name)
        assert component.plugin == "kdzoo-feature-losses"
        assert isinstance(component.factory, str) and component.factory.startswith("kdzoo_feature_losses.")
        assert component.description
        loss = host.registry.build("loss", name, {})
        assert isinstance(loss, Loss) and loss.uses_teachers


def test_params_are_validated(host):
    with pytest.raises(ValidationError):
        host.registry.build("loss", "rkd", {"distance_wieght": 1.0})  # typo: extra fields are forbidden
    with pytest.raises(ValidationError):
        host.registry.build("loss", "crd", {"temperature": 0})
    with pytest.raises(ValidationError):
        host.registry.build("loss", "crd", {"student_layers": ["a", "b"]})  # one embedding only
    loss = host.registry.build("loss", "at", {"p": 3, "student_layers": ["stage2"]})
    assert loss.params.p == 3.0 and loss.params.student_layers == ["stage2"]


def test_hook_module_does_not_import_torch():
    code = "import sys, kdzoo_feature_losses; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", sorted(set(NAMES) - RUNS_NETWORKS))
def test_setup_and_forward_on_tiny_networks(harness, name):
    torch.manual_seed(0)
    student = harness.tiny_cnn((8, 16))
    teachers = [harness.tiny_cnn((6, 12)), harness.tiny_cnn((10, 20), second_stride=4)]
    images = torch.rand(4, 3, 8, 8)
    run = harness.on_networks(name, student, teachers, images)

    student_taps, teacher_taps = run.taps[0]
    kind = next(k for k, names in DEFAULT_TAPS.items() if name in names)
    expected = {
        "second_stage": ["stage2"],
        "last_stage": ["stage2"],
        "all_stages": ["stage1", "stage2"],
        "all_stages_pre_activation": ["stage1", "stage2"],
        "stages_and_embedding": ["stage1", "stage2", "pool"],
        "embedding": ["pool"],
    }[kind]
    assert student_taps == expected and teacher_taps == expected

    loss = run.loss(run.batch())
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for t in teachers for p in t.parameters())
    if count_parameters(run.loss):
        # one set of connectors per teacher: the two teachers have different widths
        assert len(run.loss.per_teacher) == 2
        assert count_parameters(run.loss.per_teacher[0]) != count_parameters(run.loss.per_teacher[1])


def test_ofd_reads_the_margin_from_the_teachers_batchnorm(harness):
    torch.manual_seed(0)
    teacher = harness.tiny_cnn((6, 12))
    with torch.no_grad():
        teacher.body.stage2[1].bias.fill_(-0.5)
    run = harness.on_networks("ofd", harness.tiny_cnn((8, 16)), [teacher], torch.rand(4, 3, 8, 8))
    stage1, stage2 = run.loss.per_teacher[0]
    assert stage1.margin_from_batchnorm and stage2.margin_from_batchnorm
    assert (stage2.margin < -0.5).all()  # E[x | x < 0] lies below the mean when the mean is negative


def test_default_stage_taps_pair_the_deepest_stages(harness):
    student = {"s1": torch.randn(4, 8, 4, 4), "s2": torch.randn(4, 8, 2, 2)}
    teacher = {"t0": torch.randn(4, 6, 8, 8), "t1": torch.randn(4, 6, 4, 4), "t2": torch.randn(4, 6, 2, 2)}
    run = harness.on_features("at", student, [teacher])
    assert [(p.student_path, p.teacher_path) for p in run.loss.layer_pairs[0]] == [("s1", "t1"), ("s2", "t2")]


def test_vit_token_maps_become_grids(harness):
    torch.manual_seed(0)
    student = torch.randn(4, 8, 4, 4)
    grid = torch.randn(4, 6, 4, 4)
    tokens = torch.cat([torch.randn(4, 1, 6), grid.flatten(2).transpose(1, 2)], dim=1)  # CLS + 16 patches
    from_tokens = harness.on_features("at", {"s": student}, [{"t": tokens}])
    from_grid = harness.on_features("at", {"s": student}, [{"t": grid}])
    assert_close(from_tokens(), from_grid())


@pytest.mark.parametrize("name", ["at", "nst", "fitnet", "ofd", "reviewkd", "fsp", "mgd", "cwd"])
def test_unusable_token_maps_are_rejected_in_setup(harness, name):
    # embeddings "e" for reviewkd's pooled level (the map-only losses ignore them)
    student = {"s1": torch.randn(4, 8, 4, 4), "s2": torch.randn(4, 8, 2, 2), "e": torch.randn(4, 8)}
    teacher = {"t1": torch.randn(4, 6, 4, 4), "t2": torch.randn(4, 11, 6), "e": torch.randn(4, 6)}  # 11 and 10 tokens: no square grid
    with pytest.raises(ValueError, match=r"'t2'.*\(4, 11, 6\)"):
        harness.on_features(name, student, [teacher])


def test_tap_errors_are_clear(harness):
    maps = {"s1": torch.randn(4, 8, 4, 4)}
    with pytest.raises(ValueError, match="fsp needs at least 2 layer pairs"):
        harness.on_features("fsp", maps, [{"t1": torch.randn(4, 8, 4, 4)}])
    with pytest.raises(ValueError, match="rkd: the student network declares no embedding tap"):
        harness.on_features("rkd", maps, [{"t1": torch.randn(4, 8, 4, 4)}])
    with pytest.raises(ValueError, match=r"student_layers \(2\) and teacher_layers \(1\)"):
        harness.on_features(
            "at",
            {"s1": torch.randn(4, 8, 4, 4), "s2": torch.randn(4, 8, 2, 2)},
            [{"t1": torch.randn(4, 8, 4, 4)}],
            params={"student_layers": ["s1", "s2"], "teacher_layers": ["t1"]},
        )
    with pytest.raises(ValueError, match="student has no module 'missing'"):
        harness.on_features("at", maps, [{"t1": torch.randn(4, 8, 4, 4)}], params={"student_layers": ["missing"]})


def test_connectors_live_in_the_state_dict(harness):
    run = harness.on_features("crd", {"e": torch.randn(4, 16)}, [{"e": torch.randn(4, 12)}], num_samples=20)
    state = run.loss.state_dict()
    assert state["per_teacher.0.student_memory"].shape == (20, 128)
    assert "per_teacher.0.embed_teacher.weight" in state
    assert count_parameters(run.loss) == (16 * 128 + 128) + (12 * 128 + 128)
    fresh = harness.on_features("crd", {"e": torch.randn(4, 16)}, [{"e": torch.randn(4, 12)}], num_samples=20)
    fresh.loss.load_state_dict(state)
    assert_close(fresh.loss.per_teacher[0].teacher_memory, run.loss.per_teacher[0].teacher_memory)


def test_identity_connector_has_no_parameters(harness):
    run = harness.on_features("fitnet", {"s": torch.randn(4, 8, 4, 4)}, [{"t": torch.randn(4, 8, 4, 4)}], params={"connector": "auto"})
    assert isinstance(run.loss.per_teacher[0][0], nn.Identity) and count_parameters(run.loss) == 0


@pytest.fixture(scope="module")
def model_host():
    patch = pytest.MonkeyPatch()
    patch.setenv("KDZOO_LOAD_PLUGINS", "kdzoo-models")
    try:
        return load_plugins()
    finally:
        patch.undo()


def test_reviewkd_on_cifar_resnets_reviews_the_three_stages_and_the_pooled_feature(harness, model_host):
    torch.manual_seed(0)

    def cifar_resnet(depth, width):
        return model_host.registry.build("model", "cifar-resnet", {"depth": depth, "width": width}, num_classes=10, image_size=32)

    student, teacher = cifar_resnet(8, 64), cifar_resnet(14, 32)  # resnet8x4; a narrower teacher
    run = harness.on_networks("reviewkd", student, [teacher], torch.rand(2, 3, 32, 32))
    levels = ["layer1", "layer2", "layer3", "avgpool"]
    teacher_levels = [f"layer{i}.1.pre_activation" for i in (1, 2, 3)] + ["avgpool"]  # mdistiller: the teacher's preact_feats
    assert run.taps[0] == (levels, teacher_levels)
    fusions = run.loss.per_teacher[0]
    # mdistiller's resnet8x4 setting: fusion width min(512, 256) = 256; the pooled level is 1x1 and not fused
    assert [f.reduce[0].out_channels for f in fusions] == [256] * 4
    assert [f.output[0].out_channels for f in fusions] == [32, 64, 128, 128]
    assert [f.output_size for f in fusions] == [(32, 32), (16, 16), (8, 8), (1, 1)]
    assert [f.attention is None for f in fusions] == [False, False, False, True]
    loss = run.loss(run.batch())
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert student.body.layer1[0].conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fusions.parameters())
    assert all(p.grad is None for p in teacher.parameters())
