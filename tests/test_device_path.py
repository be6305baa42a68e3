"""The GPU data path, checked on the CPU: where the train images go, augmentation that
creates nothing off the images' device, no host sync per step (losses and the
non-finite flag stay on the device), and `compile: true`."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from kdzoo.errors import TrainingError
from kdzoo.run import step as step_module
from kdzoo.run import trainer as engine
from kdzoo.run.data import TrainBatches, batch_indices, placement
from kdzoo.run.teachers import Teacher
from kdzoo.spec import validate_spec

GB = 1 << 30
MODEL = {"name": "cifar-resnet", "params": {"depth": 8, "width": 4}}


# ----------------------------------------------------------------------------- 1. placement
def test_placement_decides_from_the_device_and_the_free_memory():
    cuda = torch.device("cuda")
    assert placement(torch.device("cpu"), 150 * 1024**2, free_bytes=100 * GB) == "host"  # never asks CUDA
    assert placement(torch.device("cpu"), 500 * GB, free_bytes=1) == "host"
    assert placement(cuda, 150 * 1024**2, free_bytes=80 * GB) == "device"  # CIFAR on any GPU
    assert placement(cuda, 30 * GB, free_bytes=80 * GB) == "pinned"  # over a quarter of what is free
    assert placement(cuda, 20 * GB, free_bytes=80 * GB) == "pinned"  # a quarter exactly does not fit
    assert placement(cuda, 20 * GB - 1, free_bytes=80 * GB) == "device"


@pytest.mark.parametrize("where", ["device", "pinned"])
@pytest.mark.parametrize("world", [(0, 1), (1, 2)])
def test_every_placement_gives_the_host_paths_batches(where, world):
    rank, world_size = world
    images = torch.randint(0, 256, (70, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    labels = torch.arange(70) % 5
    host = TrainBatches(images, labels, torch.device("cpu"))
    other = TrainBatches(images, labels, torch.device("cpu"))
    other.where = where  # the CUDA paths' indexing, run on the CPU
    expected = list(host.epoch(16, torch.Generator().manual_seed(9), rank, world_size))
    got = list(other.epoch(16, torch.Generator().manual_seed(9), rank, world_size))
    assert host.where == "host" and len(got) == len(expected) == 4  # drop_last, as batch_indices
    for (a_img, a_lab, a_idx), (b_img, b_lab, b_idx) in zip(expected, got):
        assert torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab) and torch.equal(a_idx, b_idx)
    first = next(iter(batch_indices(70, 16, torch.Generator().manual_seed(9), True)))
    assert torch.equal(expected[0][2], first.tensor_split(world_size)[rank])


# ----------------------------------------------------------------------------- 2. device-agnostic augmentation
FACTORIES = ("rand", "randn", "randint", "randperm", "empty", "zeros", "ones", "full", "tensor", "as_tensor", "arange", "linspace", "eye")
# Host-side by design: torchvision's policies pick operations and magnitudes on the host
# (read with .item()), and a CPU generator draws the seed they run under.
HOST_SIDE = {("torchvision.transforms.v2._auto_augment", None), ("kdzoo_data.augment", "_host_seed")}


def factory_calls(monkeypatch, function, *args):
    """``function(*args)`` with torch's factories recording (caller module, caller, device asked for)."""
    calls = []
    with monkeypatch.context() as patch:
        for name in FACTORIES:
            real = getattr(torch, name)

            def recording(*a, _real=real, **k):
                frame = sys._getframe(1)
                calls.append((frame.f_globals.get("__name__", ""), frame.f_code.co_name, k.get("device")))
                return _real(*a, **k)

            patch.setattr(torch, name, recording)
        out = function(*args)
    return out, calls


def off_device(calls, device: torch.device) -> list:
    """Calls outside torch itself that asked for another device than ``device`` (None: the CPU)."""
    return [
        (module, caller, asked) for module, caller, asked in calls
        if not module.startswith("torch.") and (module, None) not in HOST_SIDE and (module, caller) not in HOST_SIDE
        and torch.device(asked if asked is not None else "cpu") != device
    ]


@pytest.mark.parametrize("name", ["none", "weak", "strong", "randaugment", "paper-weak", "paper-strong", "cutout", "autoaugment"])
def test_every_policy_creates_its_tensors_on_the_images_device(host, monkeypatch, name):
    params = {"max_rotation": 15.0} if name == "paper-weak" else {"padding_mode": "zeros"} if name == "weak" else {}
    policy = host.registry.build("augmentation", name, params)
    images = torch.empty(24, 3, 32, 32, dtype=torch.uint8, device="meta")  # a CPU tensor mixed in fails here
    out, calls = factory_calls(monkeypatch, policy, images, torch.Generator().manual_seed(0))
    assert out.device == images.device and out.dtype == torch.uint8 and out.shape == images.shape
    assert not off_device(calls, images.device)
    if name != "none":
        assert any(module == "kdzoo_data.augment" and asked == images.device for module, _, asked in calls)


def test_the_device_check_catches_a_draw_without_device(monkeypatch):
    def careless(images, generator):
        return images + torch.rand(images.shape[0], generator=generator).to(images.device)[:, None, None, None]

    _, calls = factory_calls(monkeypatch, careless, torch.empty(4, 3, 8, 8, device="meta"), torch.Generator())
    assert off_device(calls, torch.device("meta")) == [(__name__, "careless", None)]


# ----------------------------------------------------------------------------- 3. no sync per step, non-finite stops
def trainer_for(host, tmp_path, kind="train", **fields):
    data = {"name": "synthetic-shapes", "params": {"train_size": fields.pop("train_size", 192), "test_size": 32, "num_classes": 4}}
    spec = {"kind": kind, "name": "dev", "epochs": 2, "batch_size": 32, "precision": "fp32", "threads": 1, "data": data,
            "output_dir": str(tmp_path / "runs"), "augmentation": "weak", **fields}
    teachers = []
    if kind == "train":
        spec["model"] = MODEL
    else:
        spec.update(student={"model": MODEL}, teachers=[{"name": f"t{i}", "train": {"model": MODEL}} for i in (1, 2)])
        torch.manual_seed(1)
        teachers = [Teacher(f"t{i}", host.registry.build("model", "cifar-resnet", MODEL["params"], num_classes=4, image_size=32)) for i in (1, 2)]
    return engine.Trainer(validate_spec(spec, host.registry), host, tmp_path / "run", teachers, log=lambda _: None)


READS = ("item", "tolist", "__bool__", "__int__", "__float__")


def test_an_epoch_reads_the_device_a_few_times_not_once_per_step(host, tmp_path, monkeypatch):
    trainer = trainer_for(host, tmp_path, kind="distill", train_size=384)  # 2 teachers, CE + KD
    counts = dict.fromkeys(READS, 0)
    with monkeypatch.context() as patch:
        for name in READS:
            real = getattr(torch.Tensor, name)

            def counting(self, *a, _name=name, _real=real, **k):
                counts[_name] += 1
                return _real(self, *a, **k)

            patch.setattr(torch.Tensor, name, counting)
        step, losses = trainer.train_epoch(0, 0, True)
    assert step == trainer.steps_per_epoch == 12
    assert sum(counts.values()) <= 3, counts  # the flag and the sums, once each; not 12 x (total, 2 terms, flag)
    assert set(losses) == {"loss", "loss/ce", "loss/kd"} and all(v > 0 for v in losses.values())


def spoil(trainer, bad_step: int, fail_after: bool = False):
    """Make term 0 NaN at ``bad_step``; record every step run and the finite term there."""
    seen: dict = {"steps": [], "finite": None}
    forward = trainer.step_module.forward

    def spoiled(images, teachers, targets, indices, epoch, epochs, step, steps):
        seen["steps"].append(step)
        if fail_after and step == bad_step + 1:
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        terms = forward(images, teachers, targets, indices, epoch, epochs, step, steps)
        if step == bad_step:
            seen["finite"] = [float(t.detach()) for t in terms[1:]]
            terms = [terms[0] * float("nan"), *terms[1:]]
        return terms

    trainer.step_module.forward = spoiled
    return seen


@pytest.mark.parametrize("check_every", [50, 2])
def test_a_loss_that_becomes_nan_mid_epoch_stops_with_its_terms_and_keeps_the_last_good_state(host, tmp_path, monkeypatch, check_every):
    from kdzoo import rundir
    from kdzoo.run.checkpoint import load_tensors_with_metadata

    monkeypatch.setattr(engine, "CHECK_EVERY", check_every)
    losses = [{"name": "ce", "weight": 0.5}, {"name": "ce", "weight": 0.5, "params": {"label_smoothing": 0.1}}]
    trainer = trainer_for(host, tmp_path, losses=losses)  # 6 steps per epoch
    seen = spoil(trainer, bad_step=7)  # epoch 2, its second step
    with pytest.raises(TrainingError) as caught:
        trainer.fit()
    message = str(caught.value)
    assert f"the loss became nan at epoch 2, step 8 (ce=nan, ce={seen['finite'][0]:.4g}); stopped; the last good state (after epoch 1)" in message
    assert seen["steps"][6:] == ([6, 7, 8, 9, 10, 11] if check_every == 50 else [6, 7])  # checked at steps 2, 4, ... of an epoch
    tensors, header = load_tensors_with_metadata(rundir.state_file(tmp_path / "run"))
    assert json.loads(header["kdzoo_state"])["epoch"] == 1 and all(bool(t.isfinite().all()) for t in tensors.values() if t.is_floating_point())
    assert len((tmp_path / "run" / rundir.METRICS_FILE).read_text().splitlines()) == 1
    assert not (tmp_path / "run" / rundir.MODEL_FILE).exists()


def test_a_step_that_fails_after_a_nan_one_reports_the_nan(host, tmp_path):
    trainer = trainer_for(host, tmp_path, epochs=1)
    spoil(trainer, bad_step=2, fail_after=True)
    with pytest.raises(TrainingError, match=r"the loss became nan at epoch 1, step 3 \(ce=nan\); stopped; no epoch had finished") as caught:
        trainer.fit()
    assert "probability tensor" in str(caught.value.__cause__)


def test_with_several_ranks_the_earliest_bad_step_tells_its_story(monkeypatch):
    from kdzoo.api import Reducer
    from kdzoo.run import distributed
    from kdzoo.spec.models import LossTerm

    reports = [(9, float("inf"), "ce=inf"), None, (7, float("nan"), "ce=nan"), (7, float("nan"), "ce=1")]
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    monkeypatch.setattr(Reducer, "gather", lambda self, value: reports)
    error = step_module.divergence_error([LossTerm(name="ce")], "s", 1, None)
    assert str(error).startswith("the loss became nan on rank 2 at epoch 2, step 8 (ce=nan); stopped") and error.all_ranks


# ----------------------------------------------------------------------------- 4. compile
def test_compile_wraps_the_student_and_every_teacher_and_is_off_by_default(host, tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda forward, **kwargs: compiled.append(forward) or forward)
    trainer_for(host, tmp_path / "a", kind="distill")
    assert compiled == []
    trainer = trainer_for(host, tmp_path / "b", kind="distill", compile=True)
    networks = [trainer.network, *(t.network for t in trainer.teachers)]
    assert [f.__self__ for f in compiled] == networks and all(f.__func__ is type(n).forward for f, n in zip(compiled, networks))
    assert "compile" not in trainer_for(host, tmp_path / "c").spec.model_dump(mode="json")  # resolved specs and cache keys unchanged
    assert trainer.spec.model_dump(mode="json")["compile"] is True
