"""The stages of the methods RepDistiller trains in two stages (``train_student.py`` with
``helper/pretrain.py:init``): FT's paraphraser stage reconstructs the teacher's feature and
then stays frozen; AB's and FSP's ``init`` stage trains only what RepDistiller's init
optimizer holds (the student's feature layers, AB's connectors), and the distillation stage
after it leaves what only the method's loss trained alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from kdzoo.host.build import build_model
from kdzoo.host.loading import load_plugins
from kdzoo.run.teachers import Teacher
from kdzoo.run.trainer import Trainer
from kdzoo.spec import validate_spec

DATA = {"name": "synthetic-shapes", "params": {"train_size": 64, "test_size": 32, "num_classes": 4}}
STUDENT = {"name": "cifar-resnet", "params": {"depth": 8, "width": 4}}


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- FT, loss by loss
def test_ft_paraphraser_stage_is_the_reconstruction_alone_and_reduces_it(harness):
    s, t = randn(4, 8, 4, 4, seed=1), torch.relu(randn(4, 6, 2, 2, seed=2))
    run = harness.on_features("ft", {"s": s}, [{"t": t}])
    modules = run.modules()[0]
    student = s.clone().requires_grad_(True)

    def value(stage):
        batch = run.batch({"s": student}, [{"t": t}])
        batch.stage = stage
        return run.loss(batch)

    first = value("paraphraser")
    with torch.no_grad():  # RepDistiller's nn.MSELoss(f_t_rec, f_t), written out
        expected = ((modules.decoder(modules.encoder(t)) - t) ** 2).mean()
    assert_close(first, expected)
    first.backward()
    assert student.grad is None  # the student takes no part
    assert all(p.grad is None for p in modules.translator.parameters())
    assert all(p.grad is not None for p in [*modules.encoder.parameters(), *modules.decoder.parameters()])
    optimizer = torch.optim.SGD(run.loss.parameters(), lr=0.05, momentum=0.9)
    for _ in range(60):
        optimizer.zero_grad()
        value("paraphraser").backward()
        optimizer.step()
    assert value("paraphraser").item() < 0.75 * first.item()


def test_ft_transfer_stage_keeps_the_paraphraser_frozen(harness):
    s, t = randn(4, 8, 4, 4, seed=1), torch.relu(randn(4, 6, 2, 2, seed=2))
    run = harness.on_features("ft", {"s": s}, [{"t": t}], params={"reconstruction_weight": 0.7})
    modules = run.modules()[0]
    run.loss.eval()
    batch = run.batch()
    batch.stage = "transfer"
    value = run.loss(batch)
    factor_t = modules.encoder(t)
    factor_s = F.interpolate(modules.translator(s), size=(2, 2), mode="bilinear", align_corners=False)
    unit = lambda x: x / x.norm(dim=1, keepdim=True)  # noqa: E731
    phi = lambda f: unit((f**2).mean(dim=1).flatten(1))  # noqa: E731  (RepDistiller's factor, p1 = 2)
    assert_close(value, (phi(factor_s) - phi(factor_t)).abs().mean())  # no reconstruction term
    run.loss.zero_grad()
    value.backward()
    assert all(p.grad is None for p in [*modules.encoder.parameters(), *modules.decoder.parameters()])
    assert all(p.grad is not None for p in modules.translator.parameters() if p.requires_grad)


def test_ft_paraphraser_has_repdistillers_layers(harness):
    run = harness.on_features("ft", {"s": randn(2, 8, 4, 4)}, [{"t": randn(2, 6, 2, 2)}])
    modules = run.modules()[0]
    kinds = lambda seq: [type(m).__name__ for m in seq]  # noqa: E731
    assert kinds(modules.encoder) == ["Conv2d", "LeakyReLU"] * 3  # Paraphraser(use_bn=False)
    assert kinds(modules.decoder) == ["ConvTranspose2d", "LeakyReLU"] * 3
    assert kinds(modules.translator) == ["Conv2d", "BatchNorm2d", "LeakyReLU"] * 3  # Translator(use_bn=True)
    assert [m.out_channels for m in modules.encoder if hasattr(m, "out_channels")] == [6, 3, 3]  # k = 0.5


# --------------------------------------------------------------------------- which parameters change, in a run
@pytest.fixture(scope="module")
def full_host():
    return load_plugins()


def staged_trainer(host, tmp_path, losses, stages, teacher_width=8, **fields):
    spec = validate_spec({
        "kind": "distill", "name": "staged", "epochs": sum(s["epochs"] for s in stages), "batch_size": 32,
        "precision": "fp32", "threads": 1, "data": DATA, "student": {"model": STUDENT},
        "teachers": [{"name": "t1", "train": {"model": STUDENT}}], "losses": losses, "metrics": ["accuracy"],
        "optimizer": {"name": "sgd", "lr": 0.05, "nesterov": False}, "stages": stages,
        "output_dir": str(tmp_path / "runs"), **fields,
    }, host.registry)
    torch.manual_seed(123)
    teacher = build_model(host.registry, "cifar-resnet", {"depth": 8, "width": teacher_width}, num_classes=4, image_size=32)
    return Trainer(spec, host, tmp_path / "run", [Teacher("t1", teacher)], log=lambda *_: None)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def train_stages(trainer) -> list[tuple[dict, dict]]:
    """(student, losses) state after each epoch, the start first."""
    states = [(snapshot(trainer.network), snapshot(trainer.arm.losses))]
    step = 0
    for epoch in range(trainer.spec.epochs):
        step, _ = trainer.train_epoch(epoch, step, progress=True)
        states.append((snapshot(trainer.network), snapshot(trainer.arm.losses)))
    return states


def params(module, prefix=""):
    return {prefix + k for k, _ in module.named_parameters()}


@pytest.mark.parametrize("method", ["ab", "fsp"])
def test_ab_and_fsp_init_trains_the_feature_layers_then_ce_trains_without_them(full_host, tmp_path, method):
    # FSP as RepDistiller: equal widths (no connectors); AB: a wider teacher, connectors per stage
    width = 8 if method == "ab" else 4
    trainer = staged_trainer(full_host, tmp_path, [{"name": "ce"}, {"name": method}],
                             [{"name": "init", "epochs": 1, "weights": {"ce": 0}, "schedule": {"name": "constant"}},
                              {"name": "distill", "epochs": 1, "weights": {method: 0}}], teacher_width=width)
    (student0, losses0), (student1, losses1), (student2, losses2) = train_stages(trainer)
    classifier = {"body.fc.weight", "body.fc.bias"}
    features = params(trainer.network) - classifier
    assert changed(student0, student1) & params(trainer.network) == features  # init: not the classifier
    assert changed(losses0, losses1) == set(losses0)  # AB's connectors (and their BN statistics); FSP has none
    assert bool(losses0) == (method == "ab")
    assert classifier <= changed(student1, student2)  # distill: CE trains the classifier too ...
    assert not changed(losses1, losses2)  # ... and the loss is not computed: its connectors stay


def test_ft_paraphraser_stage_trains_the_paraphraser_alone_then_transfer_freezes_it(full_host, tmp_path):
    trainer = staged_trainer(full_host, tmp_path, [{"name": "ce"}, {"name": "ft", "weight": 200}], [
        {"name": "paraphraser", "epochs": 1, "student": "frozen", "weights": {"ce": 0, "ft": 1},
         "optimizer": {"lr": 0.01}, "schedule": {"name": "constant"}},
        {"name": "transfer", "epochs": 1},
    ])
    (student0, losses0), (student1, losses1), (student2, losses2) = train_stages(trainer)
    paraphraser = {k for k in losses0 if ".encoder." in k or ".decoder." in k}
    translator = {k for k in losses0 if ".translator." in k}
    assert paraphraser and translator and paraphraser | translator == set(losses0)
    assert not changed(student0, student1)  # frozen: weights and BatchNorm statistics
    assert changed(losses0, losses1) == paraphraser
    assert not changed(losses1, losses2) & paraphraser  # transfer: the paraphraser stays as trained
    assert translator <= changed(losses1, losses2) and params(trainer.network) <= changed(student1, student2)
