"""Further views of the batch (``Loss.views``): a loss that asks for a second, strongly
augmented view gets the teachers' and the student's outputs on it; the view is the same
images augmented again, drawn from a generator of its own, so fused arms (with and without
views) train bit for bit as one by one, and a resumed run as an uninterrupted one; under DDP
every rank ends with the same student."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kdzoo import rundir
from kdzoo.cli import cli
from kdzoo.run import trainer as engine
from tests.conftest import TINY_DATA, TINY_MODEL
from tests.test_fused import assert_same_run, records

# Records what a loss sees of its view (one JSON line per step) and pulls the two views together a little.
VIEWING = textwrap.dedent('''
    import json
    import torch
    from kdzoo import hookimpl
    from kdzoo.api import Loss, Params, ViewRequest

    class ViewingParams(Params):
        log: str = ""
        policy: str = "none"

    class Viewing(Loss):
        def views(self):
            return {"second": ViewRequest(self.params.policy)}

        def forward(self, batch):
            view = batch.views["second"]
            seen = {
                "names": sorted(batch.views),
                "same_images": bool(torch.equal(view.images, batch.images)),
                "same_student": bool(torch.allclose(view.student.logits, batch.student.logits, atol=1e-5)),
                "same_teachers": [bool(torch.allclose(v.logits, t.logits, atol=1e-5)) for v, t in zip(view.teachers, batch.teachers)],
                "student_grad": view.student.logits.requires_grad,
                "teacher_grad": [t.logits.requires_grad for t in view.teachers],
                "shape": list(view.images.shape),
            }
            with open(self.params.log, "a") as log:
                log.write(json.dumps(seen) + "\\n")
            return ((view.student.logits.float() - batch.student.logits.float()) ** 2).mean() * 0.01

    @hookimpl
    def register_losses(register):
        register("viewing", Viewing, params=ViewingParams, description="reads batch.views")
''')

CRLD = {"name": "crld"}
MLKD_TWO_VIEWS = {"name": "mlkd", "weight": 0.9, "params": {"strong_view": {"name": "randaugment", "params": {"num_ops": 2, "magnitude": 15}}}}
TEACHER = {"name": "t1", "train": {"model": TINY_MODEL, "epochs": 1}}


def write_spec(tmp_path: Path, losses: list, **fields) -> Path:
    spec = {
        "kind": "distill", "name": "views", "epochs": 1, "batch_size": 32, "threads": 1, "precision": "fp32",
        "data": TINY_DATA, "augmentation": "weak", "student": {"model": TINY_MODEL}, "teachers": [TEACHER],
        "losses": losses, "output_dir": str(tmp_path / "runs"), "plugins": [str(tmp_path / "viewing.py")], **fields,
    }
    (tmp_path / "viewing.py").write_text(VIEWING)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run(*args: str):
    return CliRunner().invoke(cli, ["run", *args, "--quiet"])


def test_a_crld_run_trains_an_epoch_with_one_teacher_forward_per_view_and_batch(tmp_path, monkeypatch):
    calls = []
    real = engine.teacher_forward_on_view
    monkeypatch.setattr(engine, "teacher_forward_on_view", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = run(str(write_spec(tmp_path, [{"name": "ce"}, CRLD])), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    (record,) = records(tmp_path / "out")
    assert record["loss/crld"] > 0 and record["loss"] > record["loss/ce"]
    assert len(calls) == 96 // 32  # one epoch of 3 steps; none while the teacher trained


def test_a_view_is_the_batch_augmented_again_seen_by_both_models(tmp_path):
    log = tmp_path / "views.jsonl"
    # No augmentation on either side: the view is the batch itself, and both models' outputs on it match.
    same = write_spec(tmp_path, [{"name": "ce"}, {"name": "viewing", "params": {"log": str(log)}}], augmentation="none")
    assert run(str(same), "--out", str(tmp_path / "same")).exit_code == 0
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(seen) == 3 and all(s["names"] == ["second"] and s["shape"] == [32, 3, 32, 32] for s in seen)
    assert all(s["same_images"] and s["same_student"] and s["same_teachers"] == [True] for s in seen)
    assert all(s["student_grad"] and s["teacher_grad"] == [False] for s in seen)
    log.unlink()
    other = write_spec(tmp_path, [{"name": "ce"}, {"name": "viewing", "params": {"log": str(log), "policy": "weak"}}], augmentation="none")
    assert run(str(other), "--out", str(tmp_path / "other")).exit_code == 0
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    assert not any(s["same_images"] or s["same_student"] for s in seen)


@pytest.fixture(scope="module")
def fused_and_separate(tmp_path_factory):
    """A kd arm, a crld arm and a two-view mlkd arm (two teachers), fused and with --fuse off."""
    tmp = tmp_path_factory.mktemp("views-fused")
    arms = [[{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5}], [{"name": "ce"}, CRLD],
            [{"name": "ce", "weight": 0.1}, MLKD_TWO_VIEWS]]
    teachers = [TEACHER, {"name": "t2", "train": {"model": TINY_MODEL, "epochs": 1, "seed": 1}}]
    spec = write_spec(tmp, [{"name": "ce"}], epochs=2, teachers=teachers, matrix={"losses": arms})
    return tmp, run(str(spec), "--out", str(tmp / "fused")), run(str(spec), "--out", str(tmp / "separate"), "--fuse", "off")


def test_fused_arms_with_views_train_bit_for_bit_as_one_by_one(fused_and_separate):
    tmp, fused, separate = fused_and_separate
    assert fused.exit_code == 0, fused.output
    assert separate.exit_code == 0, separate.output
    assert "[3 of 3 arms, fused in one pass]" in fused.output
    arms = sorted(p.name for p in (tmp / "fused" / "arms").iterdir())
    assert len(arms) == 3 and arms == sorted(p.name for p in (tmp / "separate" / "arms").iterdir())
    for arm in arms:
        assert_same_run(tmp / "fused" / "arms" / arm, tmp / "separate" / "arms" / arm)


def test_a_crld_run_resumes_as_if_uninterrupted(tmp_path, interrupt_in_epoch):
    spec = write_spec(tmp_path, [{"name": "ce"}, CRLD], epochs=3)
    whole = run(str(spec), "--out", str(tmp_path / "whole"))
    assert whole.exit_code == 0, whole.output
    restore = interrupt_in_epoch(2)
    assert run(str(spec), "--out", str(tmp_path / "cut")).exit_code != 0
    restore()
    resumed = CliRunner().invoke(cli, ["run", "--resume", str(tmp_path / "cut"), "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output
    assert_same_run(tmp_path / "whole", tmp_path / "cut")


@pytest.mark.parametrize(
    "strong_view, message",
    [
        ({"name": "no-such-policy"}, "asks for a view 'strong' augmented by 'no-such-policy': unknown augmentation"),
        ({"name": "randaugment", "params": {"num_ops": 99}}, "num_ops: Input should be less than or equal to 14"),
    ],
)
def test_a_view_kdzoo_cannot_build_is_refused_before_the_first_step(tmp_path, strong_view, message):
    spec = write_spec(tmp_path, [{"name": "ce"}, {"name": "crld", "params": {"strong_view": strong_view}}])
    result = run(str(spec), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert message in result.output and "losses: 'crld'" in result.output
    assert not (tmp_path / "out" / rundir.METRICS_FILE).exists() or not records(tmp_path / "out")


def test_under_ddp_every_rank_holds_the_same_student_after_two_view_steps(tmp_path):
    from tests.test_ddp import TORCHRUN, WORKER, _env, _run, _spec

    spec = _spec(tmp_path, kind="distill", name="ddp-views", student={"model": TINY_MODEL}, teachers=[TEACHER],
                 losses=[{"name": "ce"}, {"name": "crld", "params": {"tau_w": 0.3}}])
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "worker.py").write_text(WORKER)
    result = _run([*TORCHRUN, str(tmp_path / "worker.py"), str(tmp_path / "spec.json"), str(tmp_path / "out")], _env(), tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = json.loads((tmp_path / "out" / "ranks.json").read_text())
    assert len(ranks) == 2 and ranks[0]["digests"] == ranks[1]["digests"]
    assert json.loads((tmp_path / "out" / rundir.SUMMARY_FILE).read_text())["world_size"] == 2
    assert all(r["loss/crld"] > 0 for r in records(tmp_path / "out"))
