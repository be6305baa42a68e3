"""Several processes: DDP with gloo on the CPU, 2 ranks of one thread each, end to end.

torchrun (``python -m torch.distributed.run``) and ``kdzoo run --nproc 2`` start real
worker processes: a distil run with feature losses, CRD and CTKD (an inline teacher
trained under DDP first) whose ranks must hold identical parameters and buffers; its
sharded evaluation equals a single-process evaluation of its checkpoint; a train run
through ``--nproc``; a rank that fails, whose message reaches the user; the resumed run
equals the uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

# conftest's tiny data and model (module-scoped fixtures here: each launch costs seconds)
TINY_DATA = {"name": "synthetic-shapes", "params": {"train_size": 96, "test_size": 48, "num_classes": 4}}
TINY_MODEL = {"name": "cifar-resnet", "params": {"depth": 8, "width": 4}}

# A loss that adds nothing and fails on rank 1 in the second epoch while FLAKY_FAIL is set.
FLAKY = textwrap.dedent('''
    import os
    from kdzoo import hookimpl
    from kdzoo.api import KdzooError, Loss, rank

    class Flaky(Loss):
        uses_teachers = False

        def pair(self, student, teacher, batch, index):
            if os.environ.get("FLAKY_FAIL") and batch.epoch == 1 and rank() == 1:
                raise KdzooError("flaky: rank 1 gave up in epoch 2")
            return student.logits.float().sum() * 0.0

    @hookimpl
    def register_losses(register):
        register("flaky", Flaky, description="fails on demand")
''')

# Runs inside each rank: the real run_single (teacher, then student), then the checks
# only a rank can make (its own parameters, the collectives' results).
WORKER = textwrap.dedent('''
    import hashlib, json, sys
    from pathlib import Path
    import torch
    from kdzoo.api import Reducer, all_gather_tensor
    from kdzoo.host.loading import load_plugins
    from kdzoo.run import distributed, trainer as engine
    from kdzoo.run.runner import run_single
    from kdzoo.spec import validate_spec

    distributed.init_from_env()
    spec_path, out = Path(sys.argv[1]), Path(sys.argv[2])
    host = load_plugins()
    spec = validate_spec(json.loads(spec_path.read_text()), host.registry)
    trainers, fit = [], engine.TrainingPass.fit
    def capture(self, *args, **kwargs):
        trainers.extend(self.arms)
        return fit(self, *args, **kwargs)
    engine.TrainingPass.fit = capture
    run_single(spec, host, out, log=lambda _: None, progress=True)

    def digest(module):
        h = hashlib.sha256()
        for key, value in sorted(module.state_dict().items()):
            h.update(key.encode() + value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    mine = {f"{i}.{part}": digest(getattr(t, part)) for i, t in enumerate(trainers) for part in ("network", "losses")}
    reducer = Reducer()
    value = {"a": torch.tensor([1, 2]) * (reducer.rank + 1), "n": reducer.rank + 1, "x": 0.25}
    if reducer.rank == 1:
        value["only_here"] = {"t": torch.ones(2, dtype=torch.float64)}
    summed = reducer.sum(value)
    checks = {
        "sum": [summed["a"].tolist(), summed["n"], summed["x"], summed["only_here"]["t"].tolist()],
        "gather": all_gather_tensor(torch.arange(reducer.rank + 2)).tolist(),
    }
    every = reducer.gather({"digests": mine, "checks": checks})
    if distributed.is_main():
        (out / "ranks.json").write_text(json.dumps(every))
    distributed.shutdown()
''')


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    env.pop("KDZOO_DEBUG", None)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=240)


TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _spec(tmp: Path, **fields) -> dict:
    return {"output_dir": str(tmp / "runs"), "epochs": 2, "batch_size": 32, "precision": "fp32", "threads": 1,
            "data": TINY_DATA, **fields}


# ----------------------------------------------------------------------------- distil with DDP
@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp-distill")
    # 1100 test images: three evaluation batches of 512, 512, 76, so rank 0 evaluates
    # batches 0 and 2 and rank 1 batch 1; runs of 100 images straddle the two ranks.
    data = {**TINY_DATA, "params": {**TINY_DATA["params"], "test_size": 1100}}
    spec = _spec(
        tmp, kind="distill", name="ddp-distill", epochs=1, data=data,
        student={"model": TINY_MODEL},
        teachers=[{"name": "t1", "train": {"model": TINY_MODEL, "epochs": 1}}],
        losses=[{"name": "ce", "weight": 1.0}, {"name": "fitnet", "weight": 1.0}, {"name": "ctkd", "weight": 0.5},
                {"name": "crd", "weight": 0.5, "params": {"embed_dim": 16, "nce_k": 32}}],
        metrics=["accuracy", "fidelity", "kl", "entropy", "calibration",
                 {"name": "mutual-information", "params": {"per_batch_size": 100}},
                 {"name": "attention-iou", "params": {"per_batch_size": 100, "overlay_images": 8}}],
        eval={"splits": ["train", "test", "test_aug"]},
    )
    (tmp / "spec.json").write_text(json.dumps(spec))
    (tmp / "worker.py").write_text(WORKER)
    result = _run([*TORCHRUN, str(tmp / "worker.py"), str(tmp / "spec.json"), str(tmp / "out")], _env(), tmp)
    assert result.returncode == 0, result.stderr[-4000:]
    return tmp, spec, json.loads((tmp / "out" / "ranks.json").read_text())


def test_every_rank_holds_the_same_student_losses_and_memory_banks(distilled):
    tmp, _, ranks = distilled
    assert len(ranks) == 2
    # teacher (trained under DDP) and student, network and losses (connectors, CTKD's
    # temperature, CRD's heads and memory banks), parameters and buffers: bit for bit
    assert set(ranks[0]["digests"]) == {"0.network", "0.losses", "1.network", "1.losses"}
    assert ranks[0]["digests"] == ranks[1]["digests"]
    summary = json.loads((tmp / "out" / "summary.json").read_text())
    manifest = json.loads((tmp / "out" / "model.json").read_text())
    assert (summary["world_size"], summary["rank_batch_size"]) == (2, 16)
    assert (manifest["world_size"], manifest["rank_batch_size"]) == (2, 16)
    assert summary["connector_parameters"] > 0 and "test/mi_per_batch/student~t1" in summary["final"]


def test_collectives_sum_with_missing_keys_and_gather_uneven_shards(distilled):
    _, _, ranks = distilled
    for rank in ranks:
        assert rank["checks"]["sum"] == [[3, 6], 3, 0.5, [1.0, 1.0]]
        assert rank["checks"]["gather"] == [0, 1, 0, 1, 2]


def _close(a, b) -> bool:
    """Equal, floats to 1e-9 relative (float64 sums added in another order)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return a == b


def test_sharded_evaluation_equals_one_process_on_the_checkpoint(distilled, host):
    from kdzoo import rundir
    from kdzoo.run.checkpoint import load_tensors
    from kdzoo.run.teachers import prepare_teachers
    from kdzoo.run.trainer import Trainer
    from kdzoo.spec import validate_spec

    tmp, spec_data, _ = distilled
    summary = json.loads((tmp / "out" / "summary.json").read_text())
    spec = validate_spec(spec_data, host.registry)
    teachers = prepare_teachers(spec, host, lambda *_: pytest.fail("the teacher is cached"), log=lambda _: None)
    trainer = Trainer(spec, host, tmp / "single", teachers, log=lambda _: None)
    tensors = load_tensors(tmp / "out" / rundir.MODEL_FILE)
    prefix = rundir.BODY_PREFIX
    trainer.network.body.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    single = trainer.evaluate(final=True)
    assert single.keys() == summary["final"].keys()
    differ = [k for k in single if not _close(single[k], summary["final"][k])]
    assert not differ, {k: (single[k], summary["final"][k]) for k in differ[:5]}
    exact = [k for k in single if single[k] == summary["final"][k]]
    assert len(exact) > len(single) // 2  # counts are exact; only float64 sums may differ in the last bits


# ----------------------------------------------------------------------------- --nproc, failure, resume
@pytest.fixture(scope="module")
def train_spec(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp-train")
    (tmp / "flaky.py").write_text(FLAKY)
    spec = _spec(tmp, kind="train", name="ddp-train", model=TINY_MODEL, augmentation="weak", plugins=["flaky.py"],
                 losses=[{"name": "ce"}, {"name": "flaky"}])
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    return tmp


@pytest.fixture(scope="module")
def uninterrupted(train_spec):
    tmp = train_spec
    result = _run(["-m", "kdzoo", "run", "spec.yaml", "--out", str(tmp / "full"), "--quiet", "--nproc", "2"], _env(), tmp)
    assert result.returncode == 0, result.stderr[-4000:]
    return tmp / "full", result


def test_nproc_starts_torchrun_and_only_rank_0_prints(uninterrupted):
    run_dir, result = uninterrupted
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["world_size"], summary["rank_batch_size"]) == (2, 16)
    assert result.stdout.count("test top-1") == 1, result.stdout  # one table: rank 1 prints nothing
    assert result.stdout.count("train run ->") == 1
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_failing_rank_reaches_the_user_and_the_run_resumes_as_if_uninterrupted(train_spec, uninterrupted):
    tmp = train_spec
    cut = tmp / "cut"
    failed = _run(["-m", "kdzoo", "run", "spec.yaml", "--out", str(cut), "--quiet", "--nproc", "2"], _env(FLAKY_FAIL="1"), tmp)
    assert failed.returncode == 2, failed.stderr[-4000:]
    assert "Error: rank 1 of 2: flaky: rank 1 gave up in epoch 2" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert [json.loads(line)["epoch"] for line in (cut / "metrics.jsonl").read_text().splitlines()] == [1]
    # torchrun itself, resuming: every rank loads the same state
    resumed = _run([*TORCHRUN, "-m", "kdzoo", "run", "--resume", str(cut), "--quiet"], _env(), tmp)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming" in resumed.stdout
    full_dir = uninterrupted[0]
    full, again = (json.loads((d / "summary.json").read_text()) for d in (full_dir, cut))
    assert again["final"] == full["final"] and again["world_size"] == 2
    losses = [[json.loads(line)["loss"] for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (full_dir, cut)]
    assert losses[0] == losses[1]


# ----------------------------------------------------------------------------- the reduce contract
def test_the_default_reduce_sums_state_delegates_accumulators_and_refuses_lists():
    import torch

    from kdzoo.api import Metric, Reducer

    class Accumulator:
        def __init__(self):
            self.reduced = False

        def reduce(self, reducer):
            self.reduced = True

    class Summed(Metric):
        def reset(self):
            self.count, self.total, self.by_key, self.name = 3, torch.tensor([1.5]), {"a": torch.tensor(2)}, "kept"
            self.tally = Accumulator()

    class Listed(Metric):
        def reset(self):
            self.per_batch = [0.5]

    metric = Summed(params=object())
    metric.reset()
    metric.reduce(Reducer())  # one process: the sums are the state itself
    assert (metric.count, metric.total.tolist(), metric.by_key["a"].item(), metric.name) == (3, [1.5], 2, "kept")
    assert metric.by_key["a"].dtype == torch.int64 and metric.tally.reduced
    listed = Listed()
    listed.reset()
    with pytest.raises(TypeError, match=r"Listed.per_batch \(list\) is not a sum.*override Metric.reduce"):
        listed.reduce(Reducer())


# ----------------------------------------------------------------------------- fused arms under DDP
def test_fused_arms_under_ddp_equal_the_arms_one_by_one(tmp_path):
    from kdzoo.run.checkpoint import load_tensors

    arms = [[{"name": "ce"}, {"name": "kd"}], [{"name": "ce"}, {"name": "fitnet", "weight": 1.0}],
            [{"name": "ce"}, {"name": "crd", "weight": 0.5, "params": {"embed_dim": 16, "nce_k": 32}}]]
    spec = _spec(tmp_path, kind="distill", name="ddp-fused", epochs=1, student={"model": TINY_MODEL},
                 teachers=[{"name": "t1", "train": {"model": TINY_MODEL, "epochs": 1}}], losses=[{"name": "ce"}],
                 matrix={"losses": arms})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    outputs = {}
    for fuse in ("on", "off"):
        result = _run(["-m", "kdzoo", "run", "spec.yaml", "--out", str(tmp_path / fuse), "--quiet", "--nproc", "2", "--fuse", fuse],
                      _env(), tmp_path)
        assert result.returncode == 0, result.stderr[-4000:]
        outputs[fuse] = result.stdout
    assert "[3 of 3 arms, fused in one pass]" in outputs["on"] and "fused in one pass" not in outputs["off"]
    for arm in sorted(p.name for p in (tmp_path / "on" / "arms").iterdir()):
        fused, alone = (tmp_path / d / "arms" / arm for d in ("on", "off"))
        assert json.loads((fused / "summary.json").read_text())["final"] == json.loads((alone / "summary.json").read_text())["final"]
        a, b = load_tensors(fused / "model.safetensors"), load_tensors(alone / "model.safetensors")
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), arm
