"""Grids beyond one process: ``--launcher local --jobs K`` (child processes), ``--launcher
slurm`` through submitit's local executor, and ``kdzoo status``.

One launched grid (three distill arms sharing one inline teacher, one arm diverging)
is run once for the module and read by several tests: each arm costs a process start."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kdzoo import rundir
from kdzoo.cli import cli
from kdzoo.run.checkpoint import write_json

pytestmark = pytest.mark.slow
TIMINGS = {"wall_time_s", "train_time_s"}
GOOD_ARMS = ("lr0.05", "lr0.1")


def grid_spec(root: Path, tiny_distill: dict, **extra) -> Path:
    spec = copy.deepcopy(tiny_distill)
    spec.update(epochs=1, output_dir=str(root / "runs"), optimizer={"nesterov": False}, schedule={"name": "constant"},
                matrix={"optimizer.lr": [0.05, 0.1, 1e30]}, **extra)  # 1e30: the loss diverges
    root.mkdir(parents=True, exist_ok=True)
    path = root / "grid.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run(*args: str):
    return CliRunner().invoke(cli, ["run", *args, "--quiet"])


def logs(grid_dir: Path) -> str:
    return "".join(p.read_text() for p in sorted((grid_dir / rundir.LAUNCH_DIR).glob("*" + rundir.LOG_SUFFIX)))


def without_timings(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in TIMINGS}


_LAUNCHED: dict[str, tuple] = {}


@pytest.fixture
def launched(tiny_distill, tmp_path_factory):
    """(spec, grid dir, result) of the one launched grid, run by the first test that asks."""
    if not _LAUNCHED:
        root = tmp_path_factory.mktemp("launched")
        spec = grid_spec(root, tiny_distill)
        result = run(str(spec), "--launcher", "local", "--jobs", "2")
        _LAUNCHED["grid"] = (spec, root / "runs" / "tiny-distill", result)
    return _LAUNCHED["grid"]


def test_local_jobs_train_the_shared_teacher_once_and_a_failed_arm_lets_the_others_finish(launched):
    spec, grid, result = launched
    assert result.exit_code == 1, result.output  # as inline: a failed arm makes the grid fail
    assert "1 of 3 arms failed: lr1e30" in result.output
    assert "1 teacher first" in result.output and "teacher t1: ready in" in result.output
    assert logs(grid).count("teacher t1: training") == 1
    assert logs(grid).count("teacher t1: reusing") == 3
    entries = [p for p in (spec.parent / "runs" / rundir.TEACHERS_DIR).iterdir() if p.is_dir()]
    assert len(entries) == 1 and rundir.is_finished(entries[0])
    assert len((entries[0] / rundir.METRICS_FILE).read_text().splitlines()) == 1  # trained once, not interleaved
    for arm in GOOD_ARMS:
        assert rundir.is_finished(rundir.arm_dir(grid, arm))
        assert not (rundir.arm_dir(grid, arm) / rundir.RUNNING_FILE).exists()  # removed at the end
    failed = json.loads((rundir.arm_dir(grid, "lr1e30") / rundir.FAILED_FILE).read_text())
    assert "the loss became" in failed["error"]
    assert "lr1e30: failed: the loss became" in result.output and "| lr1e30 (failed)" in result.output


def test_launched_arms_are_the_inline_arms_and_a_rerun_skips_them(launched, tmp_path):
    spec, grid, _ = launched
    inline = run(str(spec), "--out", str(tmp_path / "inline"))
    assert inline.exit_code == 1, inline.output
    assert "teacher t1: training" not in inline.output  # the cache is shared by content
    for arm in GOOD_ARMS:
        ours, theirs = (json.loads((rundir.arm_dir(d, arm) / rundir.SUMMARY_FILE).read_text()) for d in (grid, tmp_path / "inline"))
        assert sorted(theirs.pop("fused_with")) == sorted({*GOOD_ARMS, "lr1e30"} - {arm})  # inline: one fused pass
        assert without_timings(ours) == without_timings(theirs)  # a job per arm computes what the fused pass did
        assert (rundir.arm_dir(grid, arm) / rundir.SPEC_FILE).read_text() == (rundir.arm_dir(tmp_path / "inline", arm) / rundir.SPEC_FILE).read_text()
    # The failed arm is taken as running in another process (this one): not started twice.
    marker = rundir.arm_dir(grid, "lr1e30") / rundir.RUNNING_FILE
    write_json(marker, {"pid": os.getpid(), "host": socket.gethostname()})
    try:
        again = run(str(spec), "--launcher", "local", "--jobs", "2")
    finally:
        marker.unlink()
    assert again.output.count("already finished, skipped") == 2, again.output
    assert f"[3/3] lr1e30: still running (pid {os.getpid()}" in again.output and ": started" not in again.output
    assert again.exit_code == 1 and "1 of 3 arms failed: lr1e30" in again.output


def status(*args: str):
    result = CliRunner().invoke(cli, ["status", *args])
    assert result.exit_code == 0, result.output
    return result


def states(result) -> dict[str, str]:
    return {arm["arm"]: arm["state"] for arm in json.loads(result.output)["arms"]}


def test_status_of_a_partly_failed_a_finished_and_a_not_started_grid(launched):
    spec, grid, _ = launched
    text = status(str(grid)).output
    assert "3 arms: 2 done, 1 failed" in text and "the loss became" in text and "| t1      | done" in text
    data = json.loads(status(str(grid), "--json").output)
    assert {a["arm"]: a["state"] for a in data["arms"]} == {"lr0.05": "done", "lr0.1": "done", "lr1e30": "failed"}
    assert all(0 <= a["top1"] <= 1 for a in data["arms"] if a["state"] == "done")
    finished = status(str(spec), "--set", "matrix.optimizer.lr=[0.05,0.1]", "--json")
    assert states(finished) == {"lr0.05": "done", "lr0.1": "done"}
    fresh = json.loads(status(str(spec), "--set", "matrix.seed=[7]", "--json").output)  # another seed: another teacher
    assert [a["state"] for a in fresh["arms"]] == ["pending"] * 3 and [t["state"] for t in fresh["teachers"]] == ["pending"]
    assert "3 arms: 3 pending" in status(str(spec), "--out", str(spec.parent / "elsewhere")).output
    process = subprocess.run([sys.executable, "-m", "kdzoo", "status", str(grid), "--json"], capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr
    assert json.loads(process.stdout)["counts"] == {"done": 2, "running": 0, "stopped": 0, "failed": 1, "pending": 0}
    missing = CliRunner().invoke(cli, ["status", str(spec.parent / "nothing")])
    assert missing.exit_code == 2 and "no such run directory or spec" in missing.output


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_status_tells_a_live_run_from_a_killed_one(tmp_path):
    from kdzoo.run.launchers.running import running_marker

    grid = tmp_path / "grid"
    live, killed = rundir.arm_dir(grid, "live"), rundir.arm_dir(grid, "killed")
    (killed / rundir.SPEC_FILE).parent.mkdir(parents=True)
    (killed / rundir.SPEC_FILE).write_text("epochs: 3\n")
    (killed / rundir.METRICS_FILE).write_text('{"epoch": 1}\n')
    write_json(killed / rundir.RUNNING_FILE, {"pid": _dead_pid(), "host": socket.gethostname()})
    teacher = tmp_path / "runs" / rundir.TEACHERS_DIR / "t1-abc"
    write_json(grid / rundir.GRID_FILE, {"arms": {"live": {"teachers": {"t1": str(teacher)}}, "killed": {}, "later": {}}})
    for started in (live, rundir.teacher_partial_dir(teacher)):  # what run_single writes before its marker
        write_json(started / rundir.SPEC_FILE, {"epochs": 2})
    with running_marker(live), running_marker(rundir.teacher_partial_dir(teacher)):
        data = json.loads(status(str(grid), "--json").output)
    assert {a["arm"]: a["state"] for a in data["arms"]} == {"live": "running", "killed": "stopped", "later": "pending"}
    assert "1/3 epochs" in data["arms"][1]["detail"]
    assert data["teachers"][0]["state"] == "training"
    assert not (live / rundir.RUNNING_FILE).exists()
    after = json.loads(status(str(grid), "--json").output)
    assert after["arms"][0]["state"] == "stopped" and after["teachers"][0]["state"] == "partial"


def test_submitit_runs_a_grid_with_its_local_executor(tiny_distill, tmp_path, monkeypatch):
    monkeypatch.setenv("KDZOO_SUBMITIT_CLUSTER", "local")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    launcher = {"partition": "gpu", "time_min": 20, "cpus_per_arm": 1, "mem_gb": 2, "extra": {"slurm_qos": "normal"}}
    spec = grid_spec(tmp_path, tiny_distill, launcher=launcher)
    result = run(str(spec), "--launcher", "slurm", "--set", "matrix.optimizer.lr=[0.05,0.1]", "--time", "10")
    assert result.exit_code == 0, result.output
    assert "local job" in result.output and "teacher t1: ready in" in result.output
    grid = tmp_path / "runs" / "tiny-distill"
    assert all(rundir.is_finished(rundir.arm_dir(grid, arm)) for arm in GOOD_ARMS)
    assert logs(grid).count("teacher t1: training") == 1
    assert any(rundir.submitit_dir(grid).iterdir())
    spec_yaml = yaml.safe_load((rundir.arm_dir(grid, "lr0.1") / rundir.SPEC_FILE).read_text())
    assert "launcher" not in spec_yaml  # how an arm ran is not what it computed


def test_the_launcher_section_changes_nothing_a_run_computes(tiny_distill, host, tmp_path):
    from kdzoo.run.launchers import LaunchOptions
    from kdzoo.run.launchers.slurm import executor_parameters, settings_with_flags
    from kdzoo.run.teachers import teacher_dir
    from kdzoo.spec import validate_spec

    plain = {**tiny_distill, "output_dir": str(tmp_path)}
    section = {"partition": "a100", "gpus_per_arm": 1, "max_parallel": 4, "extra": {"slurm_account": "lab"}}
    with_section = validate_spec({**plain, "launcher": section}, host.registry)
    without = validate_spec(plain, host.registry)
    assert with_section.model_dump(mode="json") == without.model_dump(mode="json")
    assert teacher_dir(with_section.teachers[0].train) == teacher_dir(without.teachers[0].train)
    settings = settings_with_flags(with_section.launcher, LaunchOptions("slurm", jobs=2, time_min=30))
    params = executor_parameters(settings, "grid")
    assert params == {"name": "grid", "timeout_min": 30, "gpus_per_node": 1, "slurm_partition": "a100",
                      "slurm_array_parallelism": 2, "slurm_account": "lab"}


def test_launcher_flags_that_mean_nothing_are_refused(tiny_distill, tmp_path):
    spec = grid_spec(tmp_path, tiny_distill)
    for args, message in ((["--jobs", "2"], "add --launcher local"),
                          (["--launcher", "local", "--partition", "x"], "only for --launcher slurm"),
                          (["--launcher", "local", "--set", "matrix=null"], "runs the arms of a grid")):
        result = run(str(spec), *args)
        assert result.exit_code == 2 and message in result.output, result.output


def test_a_teacher_that_fails_fails_the_arms_needing_it_without_starting_them(tiny_distill, tmp_path):
    diverging = {"epochs": 1, "model": tiny_distill["teachers"][0]["train"]["model"], "optimizer": {"lr": 1e30, "nesterov": False},
                 "schedule": {"name": "constant"}}
    spec = grid_spec(tmp_path, {**tiny_distill, "teachers": [{"name": "t1", "train": diverging}]})
    result = run(str(spec), "--launcher", "local", "--jobs", "2", "--set", "matrix.optimizer.lr=[0.05,0.1]")
    assert result.exit_code == 1 and "2 of 2 arms failed" in result.output, result.output
    assert "teacher t1: failed: exit code 1: Error: the loss became" in result.output and ": started (pid" in result.output
    grid = tmp_path / "runs" / "tiny-distill"
    for arm in GOOD_ARMS:
        assert "teacher t1 could not be trained" in json.loads((rundir.arm_dir(grid, arm) / rundir.FAILED_FILE).read_text())["error"]
        assert not (grid / rundir.LAUNCH_DIR / f"arm-{arm}{rundir.LOG_SUFFIX}").exists()  # never started


def test_status_of_a_teacher_finished_but_not_yet_published(tmp_path, tiny_train):
    """Killed between the teacher's last write and its publishing rename: shown as partial
    (the next run that needs it publishes it), not a KeyError."""
    import shutil

    from click.testing import CliRunner

    from kdzoo import rundir
    from kdzoo.cli import cli
    from kdzoo.run.launchers.status import teacher_state

    spec = tmp_path / "t.yaml"
    spec.write_text(yaml.safe_dump({**tiny_train, "epochs": 1, "output_dir": str(tmp_path / "runs")}))
    entry = tmp_path / "runs" / "teachers" / "t1-abc"
    assert CliRunner().invoke(cli, ["run", str(spec), "--out", str(rundir.teacher_partial_dir(entry)), "--quiet"]).exit_code == 0
    assert teacher_state(entry)["state"] == "partial"
    shutil.move(rundir.teacher_partial_dir(entry), entry)
    assert teacher_state(entry)["state"] == "done"


def test_fuse_on_makes_one_job_per_fused_group_with_the_inline_results(launched, tmp_path):
    spec, grid, _ = launched
    fused = run(str(spec), "--out", str(tmp_path / "pass"), "--launcher", "local", "--fuse", "on")
    assert fused.exit_code == 1, fused.output  # lr1e30 diverges, as in every run of this grid
    started = [line for line in fused.output.splitlines() if ": started (" in line]
    assert len(started) == 3 and all("fused with 2 more" in line for line in started), started
    assert len({line.split("log: ")[1] for line in started}) == 1  # one job, one log, for the three arms
    assert "lr1e30: failed: the loss became" in fused.output
    for arm in GOOD_ARMS:
        ours, theirs = (json.loads((rundir.arm_dir(d, arm) / rundir.SUMMARY_FILE).read_text()) for d in (grid, tmp_path / "pass"))
        assert sorted(theirs.pop("fused_with")) == sorted({*GOOD_ARMS, "lr1e30"} - {arm})
        assert without_timings(ours) == without_timings(theirs)  # one job per arm and one pass compute the same


LOCAL_PARENT = """
import sys
from pathlib import Path
from kdzoo.run.launchers.jobs import Job
from kdzoo.run.launchers.local import run_local

root = Path(sys.argv[1])
child = ("import signal, sys, time, pathlib\\n"
         "def stop(*_):\\n    pathlib.Path(sys.argv[1]).write_text('stopped cleanly'); sys.exit(130)\\n"
         "signal.signal(signal.SIGINT, stop)\\npathlib.Path(sys.argv[1] + '.ready').write_text('')\\ntime.sleep(120)\\n")
jobs = [Job("arm", f"a{i}", f"a{i}", [sys.executable, "-c", child, str(root / f"a{i}")], root / f"a{i}.log", root)
        for i in range(2)]
run_local(jobs, 2, lambda job, where: None, lambda job, code, error: print(job.name, code, flush=True))
"""


def test_a_sigterm_to_the_local_launcher_stops_its_children_cleanly(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    parent = subprocess.Popen([sys.executable, "-c", LOCAL_PARENT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"a{i}.ready").exists() for i in range(2)):
        assert time.monotonic() < deadline and parent.poll() is None, "children did not start"
        time.sleep(0.1)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 128 + signal.SIGTERM
    # each child got the SIGINT a Ctrl-C would give (its cleanup ran) instead of training on
    assert [(tmp_path / f"a{i}").read_text() for i in range(2)] == ["stopped cleanly"] * 2


def test_slurm_arms_with_several_gpus_train_on_as_many_processes(tiny_train, tmp_path):
    """--gpus-per-arm N > 1: each arm's job runs `kdzoo run ... --nproc N` (torchrun DDP on
    its node); the job itself, run here on the CPU (gloo), trains on 2 processes."""
    import json as json_module

    from kdzoo.run import runner
    from kdzoo.run.launchers import LaunchOptions
    from kdzoo.run.launchers.grid import _arm_jobs, _executor
    from kdzoo.spec import load_spec

    spec = {**tiny_train, "epochs": 1, "batch_size": 16, "output_dir": str(tmp_path / "runs"), "matrix": {"seed": [0]}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    _, arms = load_spec(path, None)
    *_, processes = _executor(LaunchOptions("slurm", None, None, None, 2), arms[0][1], tmp_path / "grid")
    assert processes == 2
    assert _executor(LaunchOptions("slurm", None, None, None, 1), arms[0][1], tmp_path / "grid")[-1] is None
    runner.record_grid(tmp_path / "grid", arms)
    [job] = _arm_jobs(arms, path, tmp_path / "grid", [], False, True, processes)
    assert job.argv[-2:] == ["--nproc", "2"]
    job.run()  # its exit code is not asserted: gloo's teardown at exit can abort a rank after the run finished
    assert rundir.is_finished(rundir.arm_dir(tmp_path / "grid", "seed0")), job.log.read_text()
    summary = json_module.loads((rundir.arm_dir(tmp_path / "grid", "seed0") / rundir.SUMMARY_FILE).read_text())
    assert summary["world_size"] == 2
