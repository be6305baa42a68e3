"""Fault injection: a short train run, a short distil run (inline teacher) and a fused
grid are killed, or hit a full disk, at every file kdzoo renames into place; resuming
then gives the uninterrupted result bit for bit (summary, metrics.jsonl and weights,
timings apart)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from kdzoo import rundir
from kdzoo.cli import cli
from kdzoo.run import checkpoint, teachers

# How a run ran, not what it computed: its times, and which arms shared its (last) pass.
TIMINGS = {"wall_time_s", "train_time_s", "images_per_s", "fused_with"}


class Killed(BaseException):
    """Stands for kill -9: nothing in kdzoo may catch it (it is no Exception)."""


class Faults:
    """Counts renames (os.replace of atomic writes, os.rename of the teacher cache) and fails the N-th."""

    def __init__(self, monkeypatch, fail_at: int | None = None, kind: str = "kill"):
        self.calls = 0
        self.fail_at = fail_at
        self.kind = kind
        self.failed: str | None = None
        real_replace, real_rename = os.replace, os.rename
        monkeypatch.setattr(checkpoint.os, "replace", lambda src, dst: self._hit(real_replace, src, dst))
        monkeypatch.setattr(teachers.os, "rename", lambda src, dst: self._hit(real_rename, src, dst))

    def _hit(self, real, src, dst):
        index, self.calls = self.calls, self.calls + 1
        if index == self.fail_at:
            self.failed = str(dst)
            if self.kind == "kill":
                if Path(src).is_file():  # die half-way through the write before the rename
                    Path(src).write_bytes(Path(src).read_bytes()[: Path(src).stat().st_size // 2])
                raise Killed(dst)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)


def _clean(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMINGS}


def outcome(run_dir: Path, root: Path) -> dict:
    if (run_dir / rundir.ARMS_DIR).is_dir():  # a grid: every arm's outcome
        return {arm.name: outcome(arm, root) for arm in sorted((run_dir / rundir.ARMS_DIR).iterdir())}
    summary = json.loads((run_dir / rundir.SUMMARY_FILE).read_text())
    summary = _clean(summary)
    summary["teachers"] = {k: {**v, "checkpoint": Path(v["checkpoint"]).name} for k, v in summary.get("teachers", {}).items()}
    records = [_clean(json.loads(line)) for line in (run_dir / rundir.METRICS_FILE).read_text().splitlines()]
    weights = checkpoint.load_tensors(run_dir / rundir.MODEL_FILE)
    manifest = json.loads((run_dir / rundir.MANIFEST_FILE).read_text())
    manifest.pop("spec")  # holds the run's own output_dir
    return {"summary": summary, "records": records, "weights": weights, "manifest": manifest}


def same(a: dict, b: dict) -> None:
    if "summary" not in a:  # grids, arm by arm
        assert a.keys() == b.keys()
        for arm in a:
            same(a[arm], b[arm])
        return
    assert a["summary"] == b["summary"]
    assert a["records"] == b["records"]
    assert a["manifest"] == b["manifest"]
    assert a["weights"].keys() == b["weights"].keys()
    for key in a["weights"]:
        assert torch.equal(a["weights"][key], b["weights"][key]), key


def _write(spec: dict, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump({**spec, "output_dir": str(folder / "runs")}))
    return path


def run_to_end(spec_path: Path, run_dir: Path) -> None:
    """What a user does after a crash: resume the run directory, or start again when it
    holds nothing to resume (killed before its spec was written)."""
    args = ["run", "--resume", str(run_dir)] if (run_dir / rundir.SPEC_FILE).is_file() else ["run", str(spec_path), "--out", str(run_dir)]
    result = CliRunner().invoke(cli, [*args, "--quiet"])
    assert result.exit_code == 0, result.output


def inject_everywhere(monkeypatch, spec: dict, tmp_path: Path, kinds: tuple[str, ...]) -> int:
    reference_spec = _write(spec, tmp_path / "reference")
    with monkeypatch.context() as m:
        counter = Faults(m)
        run_to_end(reference_spec, tmp_path / "reference" / "out")
    reference = outcome(tmp_path / "reference" / "out", tmp_path / "reference")
    survived = 0
    for index in range(counter.calls):
        for kind in kinds:
            folder = tmp_path / f"{kind}-{index}"
            spec_path = _write(spec, folder)
            with monkeypatch.context() as m:
                faults = Faults(m, fail_at=index, kind=kind)
                if kind == "kill":
                    with pytest.raises(Killed):
                        CliRunner().invoke(cli, ["run", str(spec_path), "--out", str(folder / "out"), "--quiet"], catch_exceptions=False)
                else:
                    result = CliRunner().invoke(cli, ["run", str(spec_path), "--out", str(folder / "out"), "--quiet"])
                    assert result.exit_code == 1, result.output
                    message = result.output.strip().splitlines()[-1]
                    assert message == f"Error: cannot write {faults.failed}: No space left on device; the previous version is kept" or (
                        "teachers" in faults.failed and "No space left on device" in message), message
            run_to_end(spec_path, folder / "out")
            same(outcome(folder / "out", folder), reference)
            survived += 1
    return survived


def test_a_train_run_survives_a_kill_or_full_disk_at_every_write(monkeypatch, tiny_train, tmp_path):
    spec = {**tiny_train, "epochs": 2, "data": {**tiny_train["data"], "params": {"train_size": 64, "test_size": 32, "num_classes": 4}}}
    survived = inject_everywhere(monkeypatch, spec, tmp_path, kinds=("kill", "disk-full"))
    print(f"train run: {survived} faults injected and survived")
    assert survived >= 2 * 8  # spec, 2 x (metrics, state), model, manifest, summary


def test_a_distil_run_with_an_inline_teacher_survives_a_kill_at_every_write(monkeypatch, tiny_distill, tmp_path):
    data = {**tiny_distill["data"], "params": {"train_size": 64, "test_size": 32, "num_classes": 4}}
    spec = {**tiny_distill, "epochs": 2, "data": data}
    survived = inject_everywhere(monkeypatch, spec, tmp_path, kinds=("kill",))
    print(f"distil run: {survived} faults injected and survived")
    assert survived >= 8 + 1 + 8  # the teacher's writes, its publication, the student's


def test_two_processes_needing_one_teacher_train_it_once(tiny_distill, tmp_path):
    """The second process waits on the teacher's lock, then reuses what the first trained."""
    import subprocess
    import sys

    teacher = {"name": "t1", "train": {"model": tiny_distill["teachers"][0]["train"]["model"], "epochs": 3}}
    spec = _write({**tiny_distill, "epochs": 1, "teachers": [teacher]}, tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen([sys.executable, "-m", "kdzoo", "run", str(spec), "--out", str(tmp_path / f"student{i}"), "--quiet"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    both = "\n".join(outputs)
    assert both.count("teacher t1: training") == 1, both
    assert both.count("teacher t1: reusing") == 1, both
    cache = tmp_path / "runs" / rundir.TEACHERS_DIR
    entries = sorted(p.name for p in cache.iterdir() if p.is_dir())
    assert len(entries) == 1 and not entries[0].endswith(".partial"), entries
    assert len((cache / entries[0] / rundir.METRICS_FILE).read_text().splitlines()) == 3  # not interleaved


def test_the_teacher_cache_key_survives_a_round_trip_through_spec_yaml(tiny_distill, tmp_path, host):
    """Defaults filled in (the default `ce` loss's label_smoothing, accuracy's topk) must not
    change the key when the resolved spec is read back, as --resume does."""
    from kdzoo.run.teachers import teacher_dir
    from kdzoo.spec import validate_spec

    spec = {k: v for k, v in tiny_distill.items() if k not in ("losses", "metrics")}
    first = validate_spec({**spec, "output_dir": str(tmp_path)}, host.registry)
    reread = validate_spec(yaml.safe_load(yaml.safe_dump(first.model_dump(mode="json"))), host.registry)
    assert reread.model_dump(mode="json") == first.model_dump(mode="json")
    assert teacher_dir(reread.teachers[0].train) == teacher_dir(first.teachers[0].train)
    assert first.teachers[0].train.losses[0].params == {"label_smoothing": 0.0}


def test_a_fused_grid_survives_a_kill_at_every_write(monkeypatch, tiny_train, tmp_path):
    """Two arms in one pass write in turn: a kill between them leaves arms at different
    epochs, and rerunning the grid resumes each from its own state."""
    spec = {**tiny_train, "epochs": 2, "data": {**tiny_train["data"], "params": {"train_size": 64, "test_size": 32, "num_classes": 4}},
            "matrix": {"optimizer.lr": [0.1, 0.05]}}
    survived = inject_everywhere(monkeypatch, spec, tmp_path, kinds=("kill",))
    print(f"fused grid: {survived} faults injected and survived")
    assert survived >= 1 + 2 * (1 + 2 * 2 + 3)  # grid.json; per arm: spec, 2 x (metrics, state), model, manifest, summary
