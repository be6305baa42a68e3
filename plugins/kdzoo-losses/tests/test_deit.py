"""DeiT distillation: the loss against DeiT's formula written out in float64 numpy, the
head taps on a tiny timm distilled ViT, the refusal of a student without a distillation
head, and a one-epoch ``kdzoo run`` of a CIFAR ResNet teacher into a distilled ViT."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from kdzoo.api import DistillBatch, KdzooError, ModelOutputs
from kdzoo.host.loading import load_plugins
from kdzoo.testing import tiny_network

B, K = 4, 5
TARGETS = [0, 3, 1, 4]
# A tiny DeiT (two blocks of width 32, 16 patches of 8 x 8 on 32 x 32 images).
TINY_DEIT = {
    "arch": "deit_tiny_distilled_patch16_224",
    "img_size": 32,
    "patch_size": 8,
    "kwargs": {"embed_dim": 32, "depth": 2, "num_heads": 2},
}


@pytest.fixture(scope="module")
def host():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDZOO_LOAD_PLUGINS", "kdzoo-losses,kdzoo-models")
        return load_plugins()


def logits(seed: int, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(B, K, generator=torch.Generator().manual_seed(seed)) * scale


def batch(class_logits, dist_logits, teachers) -> DistillBatch:
    student = ModelOutputs((class_logits + dist_logits) / 2, {"head": class_logits, "head_dist": dist_logits})
    return DistillBatch(
        student=student,
        teachers=[ModelOutputs(t) for t in teachers],
        targets=torch.tensor(TARGETS),
        images=torch.zeros(B, 3, 32, 32),
        indices=torch.arange(B),
    )


# --------------------------------------------------------------------------- the formula, by hand
def log_softmax(rows: np.ndarray) -> np.ndarray:
    shifted = rows - rows.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def smoothed_ce(rows: np.ndarray, targets: list[int], smoothing: float) -> float:
    # timm's LabelSmoothingCrossEntropy: (1 - eps) * NLL + eps * mean over classes of -log p.
    logp = log_softmax(rows)
    nll = -logp[np.arange(len(targets)), targets]
    return float(np.mean((1 - smoothing) * nll - smoothing * logp.mean(axis=1)))


def deit_reference(class_logits, dist_logits, teacher, kind, alpha, tau, smoothing) -> float:
    """facebookresearch/deit losses.py DistillationLoss, in float64 numpy."""
    s, d, t = (x.double().numpy() for x in (class_logits, dist_logits, teacher))
    base = smoothed_ce(s, TARGETS, smoothing)
    if kind == "hard":
        distill = smoothed_ce(d, list(t.argmax(axis=1)), 0.0)
    else:
        log_p_t, log_p_s = log_softmax(t / tau), log_softmax(d / tau)
        kl_sum = float((np.exp(log_p_t) * (log_p_t - log_p_s)).sum())  # reduction='sum'
        distill = kl_sum * tau * tau / d.size  # / outputs_kd.numel() = batch x classes
    return base * (1 - alpha) + distill * alpha


@pytest.mark.parametrize(
    "params",
    [
        {},  # hard, alpha 0.5, label smoothing 0.1
        {"distillation_type": "hard", "alpha": 0.3, "label_smoothing": 0.0},
        {"distillation_type": "soft", "tau": 3.0, "alpha": 0.1},
        {"distillation_type": "soft", "tau": 1.0, "alpha": 0.7, "label_smoothing": 0.0},
    ],
    ids=["hard-default", "hard-alpha0.3", "soft-tau3", "soft-tau1"],
)
def test_deit_matches_the_reference_formula(host, params):
    class_logits, dist_logits, teacher = logits(0), logits(1), logits(2, scale=3.0)
    loss = host.registry.build("loss", "deit", params)
    full = {"distillation_type": "hard", "alpha": 0.5, "tau": 1.0, "label_smoothing": 0.1, **params}
    expected = deit_reference(
        class_logits, dist_logits, teacher,
        full["distillation_type"], full["alpha"], full["tau"], full["label_smoothing"],
    )
    assert float(loss(batch(class_logits, dist_logits, [teacher]))) == pytest.approx(expected, rel=1e-6)


def test_soft_deit_divides_by_batch_times_classes_not_batch(host):
    # DeiT's soft term is the KL summed and divided by numel: K times smaller than batchmean.
    class_logits, dist_logits, teacher = logits(0), logits(1), logits(2, scale=3.0)
    loss = host.registry.build("loss", "deit", {"distillation_type": "soft", "alpha": 1.0, "tau": 2.0})
    batchmean = torch.nn.functional.kl_div(
        torch.log_softmax(dist_logits / 2, 1), torch.log_softmax(teacher / 2, 1), reduction="batchmean", log_target=True
    )
    assert float(loss(batch(class_logits, dist_logits, [teacher]))) == pytest.approx(4 * float(batchmean) / K, rel=1e-6)


def test_hard_deit_needs_only_the_teachers_argmax(host):
    # alpha 1: the class head is ignored, and a teacher's scale does not change its argmax.
    class_logits, dist_logits, teacher = logits(0), logits(1), logits(2)
    loss = host.registry.build("loss", "deit", {"alpha": 1.0})
    same = loss(batch(class_logits * 7, dist_logits, [teacher * 10]))
    manual = torch.nn.functional.cross_entropy(dist_logits, teacher.argmax(1))
    assert float(loss(batch(class_logits, dist_logits, [teacher]))) == pytest.approx(float(manual), rel=1e-6)
    assert float(same) == pytest.approx(float(manual), rel=1e-6)


def test_several_teachers_average_the_distillation_term(host):
    class_logits, dist_logits = logits(0), logits(1)
    teachers = [logits(2, 3.0), logits(3, 3.0)]
    params = {"distillation_type": "soft", "tau": 3.0, "alpha": 0.4}
    loss = host.registry.build("loss", "deit", params)
    each = [deit_reference(class_logits, dist_logits, t, "soft", 0.4, 3.0, 0.1) for t in teachers]
    assert float(loss(batch(class_logits, dist_logits, teachers))) == pytest.approx(sum(each) / 2, rel=1e-6)


@pytest.mark.parametrize(("alpha", "class_moves", "dist_moves"), [(0.0, True, False), (0.5, True, True), (1.0, False, True)])
def test_each_head_learns_from_its_own_term_and_no_gradient_reaches_the_teacher(host, alpha, class_moves, dist_moves):
    class_logits = logits(0).bfloat16().requires_grad_(True)  # bf16 under autocast: computed in fp32
    dist_logits = logits(1).bfloat16().requires_grad_(True)
    teacher = logits(2).requires_grad_(True)
    value = host.registry.build("loss", "deit", {"distillation_type": "soft", "alpha": alpha})(
        batch(class_logits, dist_logits, [teacher])
    )
    assert value.dtype == torch.float32
    value.backward()
    assert bool(class_logits.grad.ne(0).any()) == class_moves
    assert bool(dist_logits.grad.ne(0).any()) == dist_moves
    assert teacher.grad is None


# --------------------------------------------------------------------------- the student
@pytest.fixture(scope="module")
def deit_student(host):
    from kdzoo.host.build import build_model

    torch.manual_seed(0)
    return build_model(host.registry, "timm", TINY_DEIT, num_classes=K, image_size=32)


def test_deit_taps_the_two_heads_of_a_timm_distilled_vit(host, deit_student):
    loss = host.registry.build("loss", "deit", {})
    paths, teacher_paths = loss.taps(deit_student, tiny_network(num_classes=K))
    assert (paths, teacher_paths) == (["head", "head_dist"], [])
    outputs = {}
    hooks = [
        deit_student.submodule(p).register_forward_hook(lambda m, i, o, p=p: outputs.__setitem__(p, o)) for p in paths
    ]
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    try:
        deit_student.train()
        with torch.no_grad():
            train_logits = deit_student(images)
        deit_student.eval()
        with torch.no_grad():
            eval_logits = deit_student(images)
    finally:
        for hook in hooks:
            hook.remove()
    assert outputs["head"].shape == outputs["head_dist"].shape == (3, K)
    assert not torch.allclose(outputs["head"], outputs["head_dist"])  # two heads, two tokens
    # timm averages the heads in training (distilled_training off) as at inference: a tensor, not a tuple.
    assert isinstance(train_logits, torch.Tensor)
    torch.testing.assert_close(train_logits, eval_logits)  # no dropout in the tiny DeiT
    torch.testing.assert_close(eval_logits, (outputs["head"] + outputs["head_dist"]) / 2)


def test_a_student_without_a_distillation_head_is_refused(host):
    loss = host.registry.build("loss", "deit", {})
    with pytest.raises(KdzooError, match="no module 'head' for its class-token head.*head_dist"):
        loss.taps(tiny_network(num_classes=K), tiny_network(num_classes=K))
    only_class_head = host.registry.build("loss", "deit", {"class_head": "fc"})
    with pytest.raises(KdzooError, match="no module 'head_dist' for its distillation head"):
        only_class_head.taps(tiny_network(num_classes=K), None)


# --------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_kdzoo_run_distils_a_cnn_into_a_distilled_vit(tmp_path, kind):
    from kdzoo import rundir
    from kdzoo.cli import cli

    tiny_resnet = {"name": "cifar-resnet", "params": {"depth": 8, "width": 4}}
    spec = {
        "kind": "distill", "name": f"deit-{kind}", "epochs": 1, "batch_size": 32, "precision": "fp32", "threads": 1,
        "data": {"name": "synthetic-shapes", "params": {"train_size": 96, "test_size": 48, "num_classes": 4}},
        "optimizer": {"name": "adamw", "lr": 5e-4, "weight_decay": 0.05},
        "student": {"model": {"name": "timm", "params": TINY_DEIT}},
        "teachers": [{"name": "t1", "train": {"model": tiny_resnet, "epochs": 1}}],
        "losses": [{"name": "deit", "params": {"distillation_type": kind, "tau": 3.0}}],
        "metrics": ["accuracy"],
        "output_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / "deit.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / rundir.METRICS_FILE).read_text().splitlines()[-1])
    assert math.isfinite(record["loss/deit"]) and record["loss/deit"] > 0
