"""Experiment tracking: every metrics.jsonl record, the hyperparameters and the final plots
reach TensorBoard (read back with tensorboard's own EventAccumulator) and W&B (offline,
read back from the files wandb wrote); the arms of a fused grid track apart; tracking is
not part of the resolved spec; a tracker asked for but not installed is refused before
any work (exit 2); a tracker that fails mid-run costs the run nothing."""

from __future__ import annotations

import copy
import io
import json
import math
import struct
import sys
import textwrap
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from kdzoo.cli import cli
from kdzoo.errors import KdzooError
from kdzoo.run import tracking
from kdzoo.run.tracking import Trackers, final_plots, hyperparameters, tracking_override
from kdzoo.spec import validate_spec
from tests.conftest import TINY_MODEL, TINY_TRAIN

# Calibration (one bin count: one reliability diagram) and attention IoU: the plots' metrics.
PLOTTED = ["accuracy", {"name": "calibration", "params": {"bins": [10]}}, "attention-iou"]


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _same(logged: float, expected: float) -> bool:
    """TensorBoard stores float32; nan (an attention IoU with no image left) stays nan."""
    return math.isnan(expected) and math.isnan(logged) or logged == pytest.approx(expected, rel=1e-6, abs=1e-7)


def _numbers(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _untimed(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("train_time_s", "images_per_s")}


def _run(args: list[str]):
    return CliRunner().invoke(cli, ["run", *args, "--quiet"])


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def _assert_every_record_logged(events, records: list[dict]) -> None:
    for record in records:
        for key, value in _numbers(record).items():
            at_epoch = [e.value for e in events.Scalars(key) if e.step == record["epoch"]]
            assert len(at_epoch) == 1 and _same(at_epoch[0], value), (key, record["epoch"], at_epoch, value)


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B with no network and nothing written outside tmp_path."""
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": tmp_path / "wandb-dir",
                        "WANDB_CONFIG_DIR": tmp_path / "wandb-config", "WANDB_CACHE_DIR": tmp_path / "wandb-cache",
                        "WANDB_DATA_DIR": tmp_path / "wandb-data", "WANDB_PROJECT": "kdzoo-tests"}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def _wandb_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def test_tensorboard_holds_every_record_the_hyperparameters_and_the_plots(write_spec, tmp_path):
    out = tmp_path / "out"
    spec = write_spec({**copy.deepcopy(TINY_TRAIN), "metrics": PLOTTED, "tracking": ["tensorboard"]})
    result = _run([str(spec), "--out", str(out)])
    assert result.exit_code == 0, result.output
    records, summary = _records(out), json.loads((out / "summary.json").read_text())
    assert "tracking" not in yaml.safe_load((out / "spec.yaml").read_text())  # not what the run computes

    events = _events(out / "tensorboard")
    _assert_every_record_logged(events, records)
    logged = set(events.Tags()["scalars"])
    assert logged == {k for r in records for k in _numbers(r)} | {f"summary/{k}" for k in tracking.SUMMARY_FIGURES if k in summary}
    assert events.Scalars("summary/best_test_top1")[0].value == pytest.approx(summary["best_test_top1"])

    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    content = {tag: HParamsPluginData.FromString(raw) for tag, raw in events.PluginTagToContent("hparams").items()}
    start = content["_hparams_/session_start_info"].session_start_info.hparams
    assert start["model"].string_value == "cifar-resnet" and start["model.width"].number_value == 4
    assert start["epochs"].number_value == 2 and start["lr"].number_value == pytest.approx(0.1)
    assert start["losses"].string_value == "1*ce" and start["augmentation"].string_value == "weak"
    metrics = {m.name.tag for m in content["_hparams_/experiment"].experiment.metric_infos}
    assert metrics == set(_numbers(summary["final"])) | {f"summary/{k}" for k in tracking.SUMMARY_FIGURES if k in summary}
    assert "test/top1/model" in metrics and "test/ece10/model" in metrics

    # Tracking changes nothing the run computes: untracked, the same figures and weights.
    untracked = tmp_path / "untracked"
    assert _run([str(write_spec({**copy.deepcopy(TINY_TRAIN), "metrics": PLOTTED}, name="untracked.yaml")), "--out", str(untracked)]).exit_code == 0
    assert [_untimed(r) for r in _records(untracked)] == [_untimed(r) for r in records]
    assert json.loads((untracked / "model.json").read_text())["metrics"] == json.loads((out / "model.json").read_text())["metrics"]
    assert (untracked / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()

    # The images are the study's plots of this run, pixel for pixel (PNG is lossless).
    from PIL import Image

    expected = final_plots("out", summary, ["test"])
    assert sorted(events.Tags()["images"]) == sorted(expected) == ["plots/test/attention", "plots/test/reliability10"]
    for tag, pixels in expected.items():
        (image,) = events.Images(tag)
        assert image.step == 2
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB")), pixels)


@dataclass
class WandbLog:
    """What an offline W&B run recorded, from its transaction log ``run-ID.wandb``."""

    name: str
    group: str
    config: dict
    history: dict[int, dict]  # step -> {key: value}; nested keys (an image's fields) as tuples
    summary: dict
    exit_code: int | None


def _wandb_log(run: Path) -> WandbLog:
    """Read ``run-ID.wandb``, the file `wandb sync` uploads, with wandb's own protobuf records.

    Offline, wandb's Go core (current wandb) writes no ``files/wandb-summary.json`` or
    ``config.yaml`` until the run is synced, and wandb ships no Python reader of the log
    any more; the log is LevelDB's log format (after a 7-byte ``:W&B`` header, 32 KiB
    blocks of chunks: crc32 of type and data, length, type), which every chunk's CRC
    checks here: a misread would fail, not pass."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run.glob("run-*.wandb")
    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    records, pending, offset, block = [], b"", 7, 32768
    while offset + 7 <= len(raw):
        if block - offset % block < 7:  # a block's tail too short for a chunk header is padding
            offset += block - offset % block
            continue
        crc, length, kind = struct.unpack("<IHB", raw[offset:offset + 7])
        data = raw[offset + 7:offset + 7 + length]
        assert zlib.crc32(bytes([kind]) + data) == crc, f"{path}: bad chunk at {offset}"
        pending, offset = pending + data, offset + 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""

    def key(item) -> str | tuple[str, ...]:
        return item.key or (item.nested_key[0] if len(item.nested_key) == 1 else tuple(item.nested_key))

    found = WandbLog("", "", {}, {}, {}, None)
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            found.name, found.group = record.run.display_name, record.run.run_group
            found.config = {key(item): json.loads(item.value_json) for item in record.run.config.update}
        elif kind == "history":
            row = {key(item): json.loads(item.value_json) for item in record.history.item}
            found.history.setdefault(row["_step"], {}).update(row)
        elif kind == "summary":
            found.summary.update({key(item): json.loads(item.value_json) for item in record.summary.update})
        elif kind == "exit":
            found.exit_code = record.exit.exit_code
    return found


def test_wandb_offline_run_holds_the_records_the_config_and_the_plots(write_spec, tmp_path, offline_wandb):
    out = tmp_path / "out"
    spec = write_spec({**copy.deepcopy(TINY_TRAIN), "metrics": PLOTTED[:2], "tracking": ["wandb"]})
    result = _run([str(spec), "--out", str(out)])
    assert result.exit_code == 0, result.output
    records, summary = _records(out), json.loads((out / "summary.json").read_text())
    (run,) = _wandb_runs(out)
    logged = _wandb_log(run)
    assert (logged.name, logged.group, logged.exit_code) == ("out", "", 0)  # a run alone: no grid, no group
    # config: the resolved spec, as spec.yaml holds it
    assert {k: v for k, v in logged.config.items() if k != "_wandb"} == yaml.safe_load((out / "spec.yaml").read_text())
    # history: every record's scalars at its epoch
    assert sorted(logged.history) == [r["epoch"] for r in records]
    for record in records:
        step = logged.history[record["epoch"]]
        assert all(_same(step[k], v) for k, v in _numbers(record).items()), (record, step)
    # summary: the final figures; the reliability diagram is an image file of the run
    for key, value in {**_numbers(summary["final"]), "summary/best_test_top1": summary["best_test_top1"]}.items():
        assert _same(logged.summary[key], value), key
    assert logged.summary[("plots/test/reliability10", "_type")] == "image-file"
    assert (run / "files" / logged.summary[("plots/test/reliability10", "path")]).is_file()


def test_fused_arms_each_track_apart_and_tracking_never_reruns_an_arm(write_spec, tmp_path, offline_wandb):
    spec = write_spec({**copy.deepcopy(TINY_TRAIN), "name": "grid", "epochs": 1, "matrix": {"optimizer.lr": [0.1, 0.05]}})
    result = _run([str(spec), "--track", "tensorboard", "--track", "wandb"])
    assert result.exit_code == 0, result.output
    grid = tmp_path / "runs" / "grid"
    arms = sorted(p for p in (grid / "arms").iterdir())
    assert [p.name for p in arms] == ["lr0.05", "lr0.1"]
    for arm in arms:
        summary = json.loads((arm / "summary.json").read_text())
        assert summary["fused_with"] == [other.name for other in arms if other != arm]  # one pass
        events = _events(arm / "tensorboard")  # its own folder, its own figures
        _assert_every_record_logged(events, _records(arm))
        assert events.Scalars("lr")[0].value == pytest.approx(_records(arm)[0]["lr"])
        assert events.Tags()["images"] == []  # no calibration or attention metric: no plots
        (run,) = _wandb_runs(arm)  # a W&B run of its own, in the grid's group
        logged = _wandb_log(run)
        assert (logged.name, logged.group) == (arm.name, "grid")
        assert logged.history[1]["lr"] == _records(arm)[0]["lr"] and logged.config["optimizer"]["lr"] == float(arm.name[2:])
    assert _records(arms[0])[0]["lr"] != _records(arms[1])[0]["lr"]
    again = _run([str(spec)])  # without tracking: the same resolved specs, so nothing reruns
    assert again.exit_code == 0 and again.output.count("already finished, skipped") == 2, again.output


NAN_LOSS = textwrap.dedent('''
    from kdzoo import hookimpl
    from kdzoo.api import Loss, Params

    class NanParams(Params):
        at: int = -1

    class NanAt(Loss):
        uses_teachers = False

        def pair(self, student, teacher, batch, index):
            return student.logits.float().mean() * 0.0 + (float("nan") if batch.step == self.params.at else 0.0)

    @hookimpl
    def register_losses(register):
        register("nan-at", NanAt, params=NanParams, description="NaN at one step")
''')


def test_a_failed_arm_closes_its_trackers_marked_failed_and_the_others_finish(write_spec, tmp_path, offline_wandb):
    (tmp_path / "nan_loss.py").write_text(NAN_LOSS)
    failing = [{"name": "ce"}, {"name": "nan-at", "params": {"at": 4}}]  # step 4: epoch 2 (3 steps an epoch)
    spec = write_spec({**copy.deepcopy(TINY_TRAIN), "name": "grid", "plugins": ["nan_loss.py"], "tracking": ["tensorboard", "wandb"],
                       "matrix": {"losses": [[{"name": "ce"}], failing]}})
    result = _run([str(spec)])
    assert result.exit_code == 1 and "1 of 2 arms failed" in result.output, result.output
    arms = {p.name: p for p in (tmp_path / "runs" / "grid" / "arms").iterdir()}
    bad = next(p for name, p in arms.items() if "nan" in name)
    good = next(p for name, p in arms.items() if "nan" not in name)
    error = json.loads((bad / "failed.json").read_text())["error"]
    events = _events(bad / "tensorboard")
    _assert_every_record_logged(events, _records(bad))  # its one good epoch
    (text,) = events.Tensors("failed/text_summary")
    assert text.tensor_proto.string_val[0].decode() == error
    assert [_wandb_log(run).exit_code for run in _wandb_runs(bad)] == [1]
    assert [_wandb_log(run).exit_code for run in _wandb_runs(good)] == [0]
    assert "failed/text_summary" not in _events(good / "tensorboard").Tags()["tensors"]
    assert _events(good / "tensorboard").PluginTagToContent("hparams")  # finished: its hyperparameters


@pytest.mark.parametrize("how", ["spec", "flag"])
def test_a_tracker_that_is_not_installed_is_refused_before_any_work(write_spec, tmp_path, monkeypatch, how):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails, find_spec finds nothing
    spec = write_spec({**copy.deepcopy(TINY_TRAIN), **({"tracking": ["wandb"]} if how == "spec" else {})})
    out = tmp_path / "out"
    result = _run([str(spec), "--out", str(out), *(["--track", "wandb"] if how == "flag" else [])])
    assert result.exit_code == 2
    assert "tracking: wandb is not installed: pip install 'kdzoo[wandb]'" in result.output
    assert not out.exists()  # refused before the run directory, let alone a teacher or an epoch


def test_trackers_open_refuses_a_missing_package_for_a_spec_set_by_hand(tmp_path, monkeypatch):
    spec = validate_spec(copy.deepcopy(TINY_TRAIN), None)
    spec.tracking = ["tensorboard"]  # assignment is not validated: open checks again
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(KdzooError, match=r"tracking: tensorboard is not installed: pip install 'kdzoo\[tensorboard\]'"):
        Trackers.open(spec, tmp_path, "run")


@pytest.mark.parametrize("tracking, message", [
    (["tensorbord"], "tracking: unknown tracker 'tensorbord' (did you mean 'tensorboard'?); allowed: tensorboard, wandb"),
    ([3], "tracking.0: Input should be 'tensorboard' or 'wandb'"),
])
def test_an_unknown_tracker_is_refused_with_the_allowed_ones(write_spec, tracking, message):
    result = CliRunner().invoke(cli, ["validate", str(write_spec({**copy.deepcopy(TINY_TRAIN), "tracking": tracking}))])
    assert result.exit_code == 2 and message in result.output, result.output


def test_tracking_shorthand_duplicates_and_inline_teachers(tiny_distill, write_spec):
    assert validate_spec({**copy.deepcopy(TINY_TRAIN), "tracking": "tensorboard"}, None).tracking == ["tensorboard"]
    assert validate_spec({**copy.deepcopy(TINY_TRAIN), "tracking": ["wandb", "tensorboard", "wandb"]}, None).tracking == ["wandb", "tensorboard"]
    tiny_distill["teachers"][0]["train"]["tracking"] = ["tensorboard"]
    result = CliRunner().invoke(cli, ["validate", str(write_spec(tiny_distill))])
    assert result.exit_code == 2 and "teachers.0.train: tracking: an inline teacher is trained once" in result.output, result.output
    bad = CliRunner().invoke(cli, ["run", str(write_spec(TINY_TRAIN)), "--track", "tensorbord"])
    assert bad.exit_code == 2 and "'tensorbord' is not one of 'tensorboard', 'wandb'" in bad.output, bad.output


def test_the_track_flag_adds_to_the_spec_and_its_overrides(write_spec):
    spec = write_spec({**copy.deepcopy(TINY_TRAIN), "tracking": ["tensorboard"]})
    assert tracking_override(spec, (), ("wandb",)) == 'tracking=["tensorboard", "wandb"]'
    assert tracking_override(spec, ("tracking=wandb",), ("tensorboard", "wandb")) == 'tracking=["wandb", "tensorboard"]'
    assert tracking_override(write_spec(copy.deepcopy(TINY_TRAIN)), (), ("tensorboard",)) == 'tracking=["tensorboard"]'


def test_a_failing_tracker_warns_once_and_the_run_finishes(write_spec, tmp_path, monkeypatch):
    def broken(self, record):  # every epoch: a tracker still in use would warn three times
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tracking.TensorBoardTracker, "log_record", broken)
    out = tmp_path / "out"
    result = _run([str(write_spec({**copy.deepcopy(TINY_TRAIN), "epochs": 3})), "--out", str(out), "--track", "tensorboard"])
    assert result.exit_code == 0, result.output
    assert result.output.count("warning: tracking: tensorboard failed for out (OSError") == 1, result.output
    assert "the run goes on without it" in result.output
    assert json.loads((out / "summary.json").read_text())["epochs"] == 3 and len(_records(out)) == 3
    assert _events(out / "tensorboard").Tags()["scalars"] == []  # dropped at its first failure


def test_a_resumed_run_goes_on_with_the_trackers_its_directory_shows(tmp_path, monkeypatch):
    untracked = validate_spec(copy.deepcopy(TINY_TRAIN), None)
    assert Trackers.open(untracked, tmp_path, "run", resumed_after=1).trackers == []
    tracked = validate_spec({**copy.deepcopy(TINY_TRAIN), "tracking": ["tensorboard"]}, None)
    killed = Trackers.open(tracked, tmp_path, "run")  # logged epochs 1 and 2, killed before epoch 2's state was saved
    killed.log_record({"epoch": 1, "loss": 1.0})
    killed.log_record({"epoch": 2, "loss": 0.75})
    killed.close()
    assert Trackers.open(untracked, tmp_path, "run", resumed_after=0).trackers == []  # a fresh start: what the spec asks
    time.sleep(1.1)  # event file names start with the second they were opened in: the resumed one sorts last
    resumed = Trackers.open(untracked, tmp_path, "run", resumed_after=1)  # --resume: spec.yaml has no tracking
    assert [t.name for t in resumed.trackers] == ["tensorboard"]
    resumed.log_record({"epoch": 2, "loss": 0.5})
    resumed.close()
    resumed.close()  # twice is fine
    # The killed attempt's epoch 2 is purged: the curve is the one of a run never killed.
    assert [(e.step, e.value) for e in _events(tmp_path / "tensorboard").Scalars("loss")] == [(1, 1.0), (2, 0.5)]
    # Uninstalled since: the spec did not ask this time, so a warning, not a refusal.
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    warnings: list[str] = []
    assert Trackers.open(untracked, tmp_path, "run", resumed_after=2, log=warnings.append).trackers == []
    assert warnings == ["warning: tracking: tensorboard failed for run (ImportError: tensorboard is not installed: "
                        "pip install 'kdzoo[tensorboard]'); the run goes on without it"]


def test_hyperparameters_are_flat_and_name_each_loss(tiny_distill, host):
    tiny_distill["losses"] = [{"name": "ce", "weight": 0.6}, {"name": "kd", "weight": 0.4, "params": {"temperature": 3}}]
    found = hyperparameters(validate_spec(tiny_distill, host.registry))
    assert found["losses"] == "0.6*ce + 0.4*kd" and found["loss.kd.weight"] == 0.4 and found["loss.kd.temperature"] == 3
    assert found["teachers"] == "t1" and found["teacher_views"] == "shared" and found["model"] == TINY_MODEL["name"]
    assert all(isinstance(v, (bool, int, float, str)) for v in found.values())
