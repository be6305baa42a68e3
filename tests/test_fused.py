"""Fused arms: a grid's arms that share data, teachers and schedule length train in one
pass (one augmentation and one teacher forward per batch), bit for bit as they would one
by one; a failing arm is dropped and the others go on; a fused group resumes; losses that
ask for peers see the other students."""

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
from kdzoo.run.arm import Arm
from kdzoo.run.checkpoint import load_tensors, load_tensors_with_metadata
from tests.conftest import TINY_DATA, TINY_MODEL

TIMINGS = {"train_time_s", "images_per_s", "wall_time_s"}

# A loss that is NaN, or raises, at one global step (to drop one arm of a pass).
FAULTY = textwrap.dedent('''
    import json
    from kdzoo import hookimpl
    from kdzoo.api import Loss, Params

    class FaultyParams(Params):
        nan_at: int = -1
        raise_at: int = -1

    class Faulty(Loss):
        uses_teachers = False

        def pair(self, student, teacher, batch, index):
            if batch.step == self.params.raise_at:
                raise ValueError("faulty: gave up on purpose")
            value = student.logits.float().mean() * 0.0
            return value + float("nan") if batch.step == self.params.nan_at else value

    class PeekingParams(Params):
        log: str = ""

    class Peeking(Loss):
        """Records what it saw of the other students (a stand-in for mutual learning)."""
        uses_teachers = False
        uses_peers = True

        def forward(self, batch):
            seen = {name: [list(p.logits.shape), p.logits.requires_grad] for name, p in batch.peers.items()}
            with open(self.params.log, "a") as log:
                log.write(json.dumps(seen) + "\\n")
            return sum(((batch.student.logits.float() - p.logits.float()) ** 2).mean() for p in batch.peers.values()) * 0.01

    @hookimpl
    def register_losses(register):
        register("faulty", Faulty, params=FaultyParams, description="NaN or an error at one step")
        register("peeking", Peeking, params=PeekingParams, description="reads batch.peers")
''')

KD = {"name": "kd", "weight": 0.5}
ARMS = [  # losses, a student of another width, two CRD arms (each draws its negatives from its own RNG stream), lr
    [{"name": "ce"}],
    [{"name": "ce", "weight": 0.5}, KD],
    [{"name": "ce"}, {"name": "fitnet", "weight": 10}],
    [{"name": "ce"}, {"name": "crd", "weight": 0.8, "params": {"nce_k": 16}}],
    [{"name": "ce"}, {"name": "crd", "weight": 0.4, "params": {"nce_k": 16}}],
]


def grid_spec(tmp_path: Path, losses: list, **fields) -> Path:
    spec = {
        "kind": "distill", "name": "fused", "epochs": 2, "batch_size": 32, "threads": 1,
        "data": TINY_DATA, "augmentation": "weak", "student": {"model": TINY_MODEL},
        "teachers": [{"name": "t1", "train": {"model": TINY_MODEL, "epochs": 1}},
                     {"name": "t2", "train": {"model": TINY_MODEL, "epochs": 1, "seed": 1}}],
        "metrics": ["accuracy", "fidelity"], "losses": [{"name": "ce"}], "matrix": {"losses": losses},
        "output_dir": str(tmp_path / "runs"), "plugins": [str(tmp_path / "faulty.py")], **fields,
    }
    (tmp_path / "faulty.py").write_text(FAULTY)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run(*args: str):
    return CliRunner().invoke(cli, ["run", *args, "--quiet"])


def records(arm_dir: Path) -> list[dict]:
    lines = (arm_dir / rundir.METRICS_FILE).read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS} for line in lines]


def assert_same_run(a: Path, b: Path) -> None:
    """Two run directories hold the same results: figures, history, weights and state, bit for bit."""
    summary_a, summary_b = (json.loads((d / rundir.SUMMARY_FILE).read_text()) for d in (a, b))
    assert summary_a["final"] == summary_b["final"], a.name
    assert records(a) == records(b), a.name
    for name in (rundir.MODEL_FILE,):
        tensors_a, tensors_b = load_tensors(a / name), load_tensors(b / name)
        assert tensors_a.keys() == tensors_b.keys()
        assert all(tensors_a[k].equal(tensors_b[k]) for k in tensors_a), a.name
    state_a, state_b = (load_tensors_with_metadata(rundir.state_file(d))[0] for d in (a, b))
    assert all(state_a[k].equal(state_b[k]) for k in state_a) and state_a.keys() == state_b.keys(), a.name


@pytest.fixture(scope="module")
def fused_and_separate(tmp_path_factory):
    """The same five-arm grid run fused (the default) and with --fuse off."""
    tmp = tmp_path_factory.mktemp("fused")
    spec = grid_spec(tmp, ARMS, matrix={"losses": ARMS, "optimizer.lr": [0.1, 0.05]})
    fused = run(str(spec), "--out", str(tmp / "fused"))
    separate = run(str(spec), "--out", str(tmp / "separate"), "--fuse", "off")
    return tmp, fused, separate


def test_fused_arms_train_bit_for_bit_as_separate_runs(fused_and_separate):
    tmp, fused, separate = fused_and_separate
    assert fused.exit_code == 0, fused.output
    assert separate.exit_code == 0, separate.output
    arms = sorted(p.name for p in (tmp / "fused" / "arms").iterdir())
    assert len(arms) == 10 and arms == sorted(p.name for p in (tmp / "separate" / "arms").iterdir())
    for arm in arms:
        assert_same_run(tmp / "fused" / "arms" / arm, tmp / "separate" / "arms" / arm)


def test_the_run_table_and_summaries_say_which_arms_ran_fused(fused_and_separate):
    tmp, fused, separate = fused_and_separate
    assert "[10 of 10 arms, fused in one pass]" in fused.output and "fused (pass of)" in fused.output
    assert fused.output.count("10 arms") >= 10
    assert "fused in one pass" not in separate.output and "[3/10]" in separate.output
    arm = next((tmp / "fused" / "arms").iterdir())
    summary = json.loads((arm / rundir.SUMMARY_FILE).read_text())
    assert len(summary["fused_with"]) == 9 and arm.name not in summary["fused_with"]
    assert "fused_with" not in json.loads((tmp / "separate" / "arms" / arm.name / rundir.SUMMARY_FILE).read_text())


def test_a_pass_runs_each_teacher_once_per_batch(tmp_path, monkeypatch):
    calls = []
    real = engine.teacher_forward
    monkeypatch.setattr(engine, "teacher_forward", lambda *a, **k: calls.append(len(a[0])) or real(*a, **k))
    result = run(str(grid_spec(tmp_path, ARMS[:3])), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert calls.count(2) == 2 * (96 // 32)  # both teachers: epochs x steps, not x 3 arms (0: the teachers' own training)


def test_arms_that_share_less_are_not_fused_together(tmp_path):
    from kdzoo.run.fusion import fusion_groups
    from kdzoo.run.runner import Member
    from kdzoo.spec import load_spec
    from kdzoo.host.loading import get_host_with_files

    path = grid_spec(tmp_path, ARMS[:2], matrix={"losses": ARMS[:2], "batch_size": [16, 32], "optimizer.lr": [0.1, 0.2]})
    host = get_host_with_files([tmp_path / "faulty.py"])
    _, runs = load_spec(path, host.registry, [])
    members = [Member(name, spec, tmp_path / name) for name, spec in runs]
    groups = fusion_groups(members)
    assert [len(g) for g in groups] == [4, 4]  # by batch size; losses and lr vary within a pass
    assert all(len({m.spec.batch_size for m in g}) == 1 for g in groups)
    assert [len(g) for g in fusion_groups(members, fuse=False)] == [1] * 8


@pytest.mark.parametrize("fault", ["nan_at", "raise_at"])
def test_a_failing_arm_is_dropped_and_the_others_go_on_unchanged(tmp_path, fault):
    arms = [ARMS[1], [{"name": "ce"}, {"name": "faulty", "params": {fault: 4}}], ARMS[2]]  # fails in epoch 2 (3 steps per epoch)
    spec = grid_spec(tmp_path, arms)
    fused = run(str(spec), "--out", str(tmp_path / "fused"))
    assert fused.exit_code == 1, fused.output
    assert "1 of 3 arms failed" in fused.output and "(failed)" in fused.output
    failed_arm = next(p for p in (tmp_path / "fused" / "arms").iterdir() if "faulty" in p.name)
    error = json.loads((failed_arm / rundir.FAILED_FILE).read_text())["error"]
    assert ("the loss became nan at epoch 2, step 5" in error) if fault == "nan_at" else ("faulty: gave up on purpose" in error)
    assert not (failed_arm / rundir.SUMMARY_FILE).exists()
    _, header = load_tensors_with_metadata(rundir.state_file(failed_arm))
    assert json.loads(header["kdzoo_state"])["epoch"] == 1  # its last good epoch
    separate = run(str(grid_spec(tmp_path, [arms[0], arms[2]])), "--out", str(tmp_path / "separate"), "--fuse", "off")
    assert separate.exit_code == 0, separate.output
    for arm in (tmp_path / "separate" / "arms").iterdir():
        assert_same_run(tmp_path / "fused" / "arms" / arm.name, arm)


def test_a_fused_group_resumes_with_its_arms_at_different_epochs(tmp_path, monkeypatch):
    spec = grid_spec(tmp_path, ARMS[:3], epochs=3)
    whole = run(str(spec), "--out", str(tmp_path / "whole"))
    assert whole.exit_code == 0, whole.output
    real_save = Arm.save_state
    saved_epoch_2 = []

    def killed_after_the_first_arm_saves_epoch_2(self, epoch, step):
        if epoch == 2 and saved_epoch_2:
            raise KeyboardInterrupt
        real_save(self, epoch, step)
        if epoch == 2:
            saved_epoch_2.append(self.name)

    monkeypatch.setattr(Arm, "save_state", killed_after_the_first_arm_saves_epoch_2)
    cut = run(str(spec), "--out", str(tmp_path / "cut"))
    assert cut.exit_code != 0
    epochs = {}
    for arm in (tmp_path / "cut" / "arms").iterdir():
        _, header = load_tensors_with_metadata(rundir.state_file(arm))
        epochs[arm.name] = json.loads(header["kdzoo_state"])["epoch"]
    assert sorted(epochs.values()) == [1, 1, 2]  # the pass was killed between two arms' saves
    monkeypatch.setattr(Arm, "save_state", real_save)
    resumed = run(str(spec), "--out", str(tmp_path / "cut"))
    assert resumed.exit_code == 0, resumed.output
    assert resumed.output.count("resuming") == 3
    for arm in (tmp_path / "whole" / "arms").iterdir():
        assert_same_run(arm, tmp_path / "cut" / "arms" / arm.name)


def test_losses_that_ask_for_peers_see_the_other_students_detached(tmp_path):
    log = tmp_path / "peers.jsonl"
    peeking = {"name": "peeking", "params": {"log": str(log)}}
    arms = [[{"name": "ce"}, peeking], [{"name": "ce"}, peeking, {"name": "kd"}]]
    spec = grid_spec(tmp_path, arms, teachers=[{"name": "t1", "train": {"model": TINY_MODEL, "epochs": 1}}], epochs=1)
    result = run(str(spec), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "out" / "arms").iterdir())
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(seen) == 2 * 3  # two arms x three steps
    assert {tuple(s) for s in seen} == {(names[1],), (names[0],)}
    assert all(shape == [32, 4] and not grad for s in seen for shape, grad in s.values())
    alone = run(str(spec), "--out", str(tmp_path / "off"), "--fuse", "off")
    assert alone.exit_code == 2 and "learn from the other students of a fused pass" in alone.output


def test_fuse_is_refused_where_there_is_nothing_to_fuse(tmp_path, write_spec, tiny_train):
    result = run(str(write_spec(tiny_train)), "--fuse", "off")
    assert result.exit_code == 2 and "no matrix, so there are no arms to fuse" in result.output
    result = run("--resume", str(tmp_path), "--fuse", "on")
    assert result.exit_code == 2 and "--resume RUN_DIR continues one run" in result.output


def test_arms_with_their_own_stages_fuse_and_train_bit_for_bit_as_separate_runs(tmp_path):
    kd_losses = [{"name": "ce"}, KD]
    variants = [
        {"name": "plain", "losses": kd_losses},
        {"name": "warmed", "losses": kd_losses, "stages": [{"name": "warm", "epochs": 1, "weights": {"kd": 0}},
                                                           {"name": "main", "epochs": 1}]},
        {"name": "frozen-first", "losses": [{"name": "ce"}, {"name": "fitnet", "weight": 10}],
         "stages": [{"name": "connectors", "epochs": 1, "student": "frozen", "weights": {"ce": 0}},
                    {"name": "train", "epochs": 1, "optimizer": {"lr": 0.05}}]},
    ]
    spec = grid_spec(tmp_path, [], matrix={"variants": variants})
    fused, separate = run(str(spec), "--out", str(tmp_path / "fused")), run(str(spec), "--out", str(tmp_path / "separate"), "--fuse", "off")
    assert fused.exit_code == 0 and separate.exit_code == 0, fused.output + separate.output
    assert "[3 of 3 arms, fused in one pass]" in fused.output
    for arm in ("plain", "warmed", "frozen-first"):
        assert_same_run(tmp_path / "fused" / "arms" / arm, tmp_path / "separate" / "arms" / arm)
    warmed = records(tmp_path / "fused" / "arms" / "warmed")
    assert [r["stage"] for r in warmed] == ["warm", "main"] and "loss/kd" not in warmed[0]
