"""DOT (Zhao et al., ICCV 2023): the optimizer's update against the rule written out by hand,
its reduction to SGD at delta 0, a tiny distil run that resumes bit for bit, the spec's
refusals and the recipe."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner

from kdzoo import rundir
from kdzoo.cli import cli
from kdzoo.errors import KdzooError
from kdzoo.run import checkpoint as ckpt
from kdzoo.run.dot import DISTILL_BUFFER, TASK_BUFFER, DistillationOrientedTrainer, dot_task_terms
from kdzoo.run.runner import run_single
from kdzoo.spec import load_spec, validate_spec

ROOT = Path(__file__).resolve().parent.parent
DOT = {"name": "dot", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "delta": 0.075}


# ----------------------------------------------------------------------------- the update rule
def toy_problem(seed: int = 0):
    """Three parameters: ``shared`` in both losses, ``head_bias`` in the task loss only,
    ``connector`` in the distillation loss only (as a feature method's connector)."""
    g = torch.Generator().manual_seed(seed)
    params = {
        "shared": torch.randn(5, 3, generator=g),
        "head_bias": torch.randn(3, generator=g),
        "connector": torch.randn(3, 3, generator=g),
    }
    x = torch.randn(8, 5, generator=g)
    labels = torch.randint(0, 3, (8,), generator=g)
    teacher = torch.randn(8, 3, generator=g)

    def task_loss(p):
        return F.cross_entropy(x @ p["shared"] + p["head_bias"], labels)

    def distill_loss(p):
        return ((x @ p["shared"] @ p["connector"] - teacher) ** 2).mean()

    return params, task_loss, distill_loss


def grads_of(loss_fn, values: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    leaves = {k: v.clone().requires_grad_(k in names) for k, v in values.items()}
    loss = loss_fn(leaves)
    found = torch.autograd.grad(loss, [leaves[k] for k in names])
    return dict(zip(names, found))


def test_dot_matches_the_update_rule_written_out(tmp_path):
    params, task_loss, distill_loss = toy_problem()
    lr, beta, delta, wd = 0.1, 0.9, 0.075, 5e-4
    lrs = [0.1, 0.1, 0.05, 0.02, 0.02]

    # By hand (mdistiller engine/dot.py): the task momentum is beta - delta, the distillation
    # momentum beta + delta; a parameter with one gradient only uses beta for it; weight decay
    # goes with the task gradient, or with the distillation gradient where there is no task
    # gradient (from its second step on); buffers start as the first (decayed) gradient.
    ref = {k: v.clone() for k, v in params.items()}
    task_buf: dict[str, torch.Tensor] = {}
    distill_buf: dict[str, torch.Tensor] = {}
    for lr in lrs:
        gt = grads_of(task_loss, ref, ["shared", "head_bias"])
        gd = grads_of(distill_loss, ref, ["shared", "connector"])
        # shared: both gradients
        d = gt["shared"] + wd * ref["shared"]
        task_buf["shared"] = d.clone() if "shared" not in task_buf else (beta - delta) * task_buf["shared"] + d
        ref["shared"] = ref["shared"] - lr * task_buf["shared"]
        distill_buf["shared"] = gd["shared"].clone() if "shared" not in distill_buf else (beta + delta) * distill_buf["shared"] + gd["shared"]
        ref["shared"] = ref["shared"] - lr * distill_buf["shared"]
        # head_bias: task gradient only, momentum beta
        d = gt["head_bias"] + wd * ref["head_bias"]
        task_buf["head_bias"] = d.clone() if "head_bias" not in task_buf else beta * task_buf["head_bias"] + d
        ref["head_bias"] = ref["head_bias"] - lr * task_buf["head_bias"]
        # connector: distillation gradient only, momentum beta, decayed after its first step
        if "connector" not in distill_buf:
            distill_buf["connector"] = gd["connector"].clone()
        else:
            distill_buf["connector"] = beta * distill_buf["connector"] + gd["connector"] + wd * ref["connector"]
        ref["connector"] = ref["connector"] - lr * distill_buf["connector"]

    leaves = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    optimizer = DistillationOrientedTrainer(list(leaves.values()), lr=lrs[0], momentum=beta, delta=delta, weight_decay=wd)
    for lr in lrs:
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        distill_loss(leaves).backward()
        optimizer.stash_distill_grads()
        task_loss(leaves).backward()
        optimizer.step()
    for name, value in ref.items():
        torch.testing.assert_close(leaves[name].detach(), value, rtol=0, atol=1e-6, msg=name)
    # the buffers are the optimizer's state: the connector has no task buffer
    state = optimizer.state_dict()["state"]
    assert set(state[0]) == {TASK_BUFFER, DISTILL_BUFFER} and set(state[1]) == {TASK_BUFFER} and set(state[2]) == {DISTILL_BUFFER}
    # and not plain SGD on the sum: the test would notice a DOT that ignored delta
    sgd = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    plain = torch.optim.SGD(list(sgd.values()), lr=0.1, momentum=beta, weight_decay=wd)
    for lr in lrs:
        plain.param_groups[0]["lr"] = lr
        plain.zero_grad()
        (task_loss(sgd) + distill_loss(sgd)).backward()
        plain.step()
    assert (sgd["shared"] - leaves["shared"]).abs().max() > 1e-4


def test_dot_with_zero_delta_is_sgd_with_momentum_on_the_summed_loss():
    g = torch.Generator().manual_seed(3)
    start = [torch.randn(6, 4, generator=g), torch.randn(4, generator=g)]
    x, labels, teacher = torch.randn(16, 6, generator=g), torch.randint(0, 4, (16,), generator=g), torch.randn(16, 4, generator=g)

    def losses(w, b):
        logits = x @ w + b
        kl = F.kl_div(F.log_softmax(logits / 4, 1), F.log_softmax(teacher / 4, 1), reduction="batchmean", log_target=True) * 16
        return 0.1 * F.cross_entropy(logits, labels), 0.9 * kl

    dot_params = [torch.nn.Parameter(p.clone()) for p in start]
    sgd_params = [torch.nn.Parameter(p.clone()) for p in start]
    dot = DistillationOrientedTrainer(dot_params, lr=0.05, momentum=0.9, delta=0.0, weight_decay=5e-4)
    sgd = torch.optim.SGD(sgd_params, lr=0.05, momentum=0.9, nesterov=False, weight_decay=5e-4)
    for _ in range(6):
        dot.zero_grad(set_to_none=True)
        task, distill = losses(*dot_params)
        distill.backward(retain_graph=True)
        dot.stash_distill_grads()
        task.backward()
        dot.step()
        sgd.zero_grad(set_to_none=True)
        sum(losses(*sgd_params)).backward()
        sgd.step()
    for a, b in zip(dot_params, sgd_params):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-6)
    assert (dot_params[0] - start[0]).abs().max() > 1e-2  # it did move


def test_dot_state_round_trips_through_state_dict():
    params, task_loss, distill_loss = toy_problem(1)

    def make():
        leaves = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
        return leaves, DistillationOrientedTrainer(list(leaves.values()), lr=0.1, momentum=0.9, delta=0.075, weight_decay=5e-4)

    def step(leaves, optimizer):
        optimizer.zero_grad(set_to_none=True)
        distill_loss(leaves).backward()
        optimizer.stash_distill_grads()
        task_loss(leaves).backward()
        optimizer.step()

    a, opt_a = make()
    for _ in range(3):
        step(a, opt_a)
    b, opt_b = make()
    with torch.no_grad():
        for k in b:
            b[k].copy_(a[k])
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    for _ in range(2):
        step(a, opt_a)
        step(b, opt_b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_task_terms_come_from_the_built_losses(host, tiny_distill, monkeypatch):
    from kdzoo.host.build import build_loss
    from kdzoo.run import distributed

    spec = validate_spec(with_dot(tiny_distill), host.registry)
    losses = [build_loss(host.registry, t.name, t.params) for t in spec.losses]
    assert dot_task_terms(spec.losses, losses) == [True, False]
    with pytest.raises(KdzooError, match="no task term"):
        dot_task_terms(spec.losses[1:], losses[1:])
    monkeypatch.setattr(distributed, "active", lambda: True)
    with pytest.raises(KdzooError, match="one process"):
        dot_task_terms(spec.losses, losses)


# ----------------------------------------------------------------------------- a run, resumed
def with_dot(spec: dict) -> dict:
    return {**spec, "optimizer": dict(DOT)}


def _records(run_dir: Path) -> list[dict]:
    timings = {"train_time_s", "images_per_s"}
    return [{k: v for k, v in json.loads(line).items() if k not in timings} for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_dot_distil_run_resumes_bit_for_bit(host, tiny_distill, tmp_path, interrupt_in_epoch):
    spec = validate_spec({**with_dot(tiny_distill), "output_dir": str(tmp_path / "runs")}, host.registry)
    assert spec.optimizer.name == "dot" and spec.optimizer.delta == 0.075
    full = run_single(spec, host, tmp_path / "full", log=lambda _: None, progress=True)
    state, header = ckpt.load_tensors_with_metadata(rundir.state_file(tmp_path / "full"))
    names = {k.split(".", 2)[-1] for k in state if k.startswith(rundir.OPTIMIZER_PREFIX)}
    assert names == {TASK_BUFFER, DISTILL_BUFFER}  # trained by DOT, both buffers in the state

    restore = interrupt_in_epoch(1)
    with pytest.raises(KeyboardInterrupt):
        run_single(spec, host, tmp_path / "cut", log=lambda _: None, progress=True)
    restore()
    resumed = CliRunner().invoke(cli, ["run", "--resume", str(tmp_path / "cut"), "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output
    cut = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert cut["final"] == full["final"]
    assert _records(tmp_path / "cut") == _records(tmp_path / "full")
    weights_full = ckpt.load_tensors(tmp_path / "full" / "model.safetensors")
    weights_cut = ckpt.load_tensors(tmp_path / "cut" / "model.safetensors")
    assert weights_full.keys() == weights_cut.keys()
    assert all(torch.equal(weights_full[k], weights_cut[k]) for k in weights_full)

    # the same run under SGD differs: the run above did train with DOT's two momenta
    sgd = validate_spec({**tiny_distill, "optimizer": {**DOT, "name": "sgd", "delta": None, "nesterov": False},
                         "output_dir": str(tmp_path / "runs")}, host.registry)
    run_single(sgd, host, tmp_path / "sgd", log=lambda _: None, progress=True)
    assert [r["loss"] for r in _records(tmp_path / "sgd")] != [r["loss"] for r in _records(tmp_path / "full")]


# ----------------------------------------------------------------------------- the spec
REFUSED = [
    ("no task term", {"losses": [{"name": "kd"}]}, "losses: optimizer dot gives", "include no task term"),
    ("no distillation term", {"losses": [{"name": "ce"}]}, "losses: optimizer dot gives", "include no distillation term"),
    ("delta out of range", {"optimizer": {**DOT, "delta": 0.2}}, "optimizer: delta: momentum - delta and momentum + delta must lie in [0, 1)", "delta 0.2"),
    ("delta with sgd", {"optimizer": {"name": "sgd", "delta": 0.1}}, "optimizer: delta: DOT's only (name: dot), not sgd's", ""),
    ("unknown optimizer", {"optimizer": {"name": "dott"}}, "optimizer.name: Input should be 'sgd', 'adamw' or 'dot'", '(got "dott")'),
]


@pytest.mark.parametrize("what, change, expected, detail", REFUSED, ids=[r[0] for r in REFUSED])
def test_bad_dot_specs_are_refused(tiny_distill, write_spec, what, change, expected, detail):
    result = CliRunner().invoke(cli, ["validate", str(write_spec({**with_dot(tiny_distill), **change}))])
    assert result.exit_code == 2, result.output
    assert expected in result.output and detail in result.output, result.output
    assert "Traceback" not in result.output


def test_a_dot_train_run_is_refused(tiny_train, write_spec):
    result = CliRunner().invoke(cli, ["validate", str(write_spec(with_dot(tiny_train)))])
    assert result.exit_code == 2 and "include no distillation term" in result.output, result.output


def test_other_optimizers_resolve_without_delta(host, tiny_distill):
    spec = validate_spec(copy.deepcopy(tiny_distill), host.registry)
    assert "delta" not in spec.model_dump(mode="json")["optimizer"]  # resolved specs of SGD runs are unchanged
    assert validate_spec(with_dot(tiny_distill), host.registry).model_dump(mode="json")["optimizer"]["delta"] == 0.075


def test_the_recipe_is_mdistillers_dot_setting(host):
    recipe = ROOT / "examples" / "recipes" / "logit" / "dot.yaml"
    (_, spec), = load_spec(recipe, host.registry)[1]
    (_, kd), = load_spec(ROOT / "examples" / "recipes" / "logit" / "kd.yaml", host.registry)[1]
    # mdistiller configs/cifar100/dot/res32x4_res8x4.yaml: KD's setting, SOLVER.TRAINER dot, DOT.DELTA 0.075
    opt = spec.optimizer
    assert (opt.name, opt.lr, opt.momentum, opt.weight_decay, opt.delta) == ("dot", 0.05, 0.9, 5e-4, 0.075)
    assert spec.losses == kd.losses and spec.teachers == kd.teachers and spec.student == kd.student
    assert (spec.epochs, spec.batch_size, spec.schedule, spec.augmentation) == (kd.epochs, kd.batch_size, kd.schedule, kd.augmentation)
    assert yaml.safe_load(recipe.read_text())["optimizer"]["name"] == "dot"
