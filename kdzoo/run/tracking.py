"""Experiment tracking: what a run writes to its directory (each epoch's record, the final
figures and plots) mirrored to TensorBoard and/or Weights & Biases, as ``tracking:`` asks.

Tracking never changes what a run computes (``tracking`` is left out of the resolved
spec), and a tracker never costs a run: one that fails while the run trains is dropped
with one warning and the run goes on. A tracker whose package is missing is refused
before any work (the spec's validation already refuses it; :meth:`Trackers.open` checks
again for specs set by hand). Only rank 0 tracks. Each arm of a fused pass has trackers
of its own: a TensorBoard folder in its own run directory, a W&B run of its own (several
in one process, grouped by the grid). TensorBoard, W&B, numpy and PIL are imported only
when a run asks for tracking.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdzoo import rundir
from kdzoo.errors import KdzooError
from kdzoo.spec.models import tracker_not_installed

if TYPE_CHECKING:
    from kdzoo.spec import AnySpec

TENSORBOARD_DIR = "tensorboard"  # RUN_DIR/tensorboard/: the event files
WANDB_DIR = "wandb"  # RUN_DIR/wandb/: what wandb.init(dir=RUN_DIR) writes there
DEFAULT_WANDB_PROJECT = "kdzoo"  # unless WANDB_PROJECT says otherwise
# The summary's own figures (besides `final`) worth comparing across runs.
SUMMARY_FIGURES = ("best_test_top1", "best_epoch", "gap_at_best", "gap_final", "parameters", "wall_time_s")
Log = Callable[[str], None]


def numbers(record: dict[str, Any]) -> dict[str, float]:
    """A record's scalar figures, keys as they are (``test/top1/student``); the epoch is the step."""
    return {k: v for k, v in record.items() if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def tracking_override(spec_path: Path, overrides: tuple[str, ...], tracks: tuple[str, ...]) -> str:
    """``kdzoo run --track NAME`` as one more ``--set``: the spec's own trackers (after the
    other overrides) and these."""
    from kdzoo.spec import apply_overrides, read_spec_file

    own = apply_overrides(read_spec_file(spec_path), list(overrides)).get("tracking") or []
    own = [own] if isinstance(own, str) else own if isinstance(own, list) else []  # anything else: validation says why
    return f"tracking={json.dumps(list(dict.fromkeys([*own, *tracks])))}"


def tracked_before(run_dir: Path) -> list[str]:
    """The trackers a run directory shows it was logged to (a resumed run goes on with them:
    ``tracking`` is not in its resolved spec)."""
    return [name for name, folder in (("tensorboard", TENSORBOARD_DIR), ("wandb", WANDB_DIR)) if (run_dir / folder).is_dir()]


def grid_name(run_dir: Path) -> str | None:
    """The grid a run directory is an arm of (``GRID/arms/ARM``), or None for a run alone."""
    return run_dir.parent.parent.name if run_dir.parent.name == rundir.ARMS_DIR else None


def _flat_value(value: Any) -> bool | int | float | str | None:
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value, sort_keys=True)


def hyperparameters(spec: AnySpec) -> dict[str, bool | int | float | str]:
    """The spec's main hyperparameters, flat (TensorBoard's HParams table): what a grid's
    arms vary — data, model and their params, augmentation, each loss's weight and params,
    optimizer, schedule, seed — with the teachers by name."""
    data = spec.model_dump(mode="json")
    model = data["model"] if "model" in data else data["student"]["model"]
    found: dict[str, Any] = {
        "kind": spec.kind, "seed": spec.seed, "epochs": spec.epochs, "batch_size": spec.batch_size,
        "data": data["data"]["name"], "augmentation": data["augmentation"]["name"], "model": model["name"],
        "optimizer": data["optimizer"]["name"], "lr": data["optimizer"]["lr"], "weight_decay": data["optimizer"]["weight_decay"],
        "schedule": data["schedule"]["name"], "warmup_epochs": data["schedule"]["warmup_epochs"], "precision": data["precision"],
    }
    found.update({f"data.{k}": v for k, v in data["data"]["params"].items()})
    found.update({f"model.{k}": v for k, v in model["params"].items()})
    names = [term["name"] for term in data["losses"]]
    found["losses"] = " + ".join(f"{term['weight']:g}*{term['name']}" for term in data["losses"])
    for index, term in enumerate(data["losses"]):
        label = term["name"] if names.count(term["name"]) == 1 else f"{term['name']}.{index}"
        found[f"loss.{label}.weight"] = term["weight"]
        found.update({f"loss.{label}.{k}": v for k, v in term["params"].items()})
    if "teachers" in data:
        found["teachers"] = ", ".join(t["name"] for t in data["teachers"])
        found["teacher_views"] = data["teacher_views"]
    flat = {key: _flat_value(value) for key, value in found.items()}
    return {key: value for key, value in flat.items() if value is not None}


def final_figures(summary: dict[str, Any]) -> dict[str, float]:
    """The final scalar metrics (keys as in the records) and the summary's own figures (``summary/...``)."""
    figures = numbers(summary.get("final", {}))
    figures.update({f"summary/{k}": summary[k] for k in SUMMARY_FIGURES if k in numbers(summary)})
    return figures


def _read_png(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def final_plots(name: str, summary: dict[str, Any], splits: list[str]) -> dict[str, Any]:
    """``plots/SPLIT/reliabilityN`` and ``plots/SPLIT/attention``: the study's reliability
    diagrams and attention overlays (kdzoo.study.plots) of this run, as HxWx3 uint8
    arrays, for the splits whose final metrics hold them."""
    import re

    from kdzoo.study.arms import Arm as FinishedRun
    from kdzoo.study.plots import plot_attention_overlays, plot_reliability

    run = FinishedRun(name=name, path=Path("."), spec={}, summary=summary, records=[])
    images: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="kdzoo-plots-") as folder:
        for split in splits:
            found = (re.fullmatch(rf"{re.escape(split)}/reliability(\d+)/.+", key) for key in run.final)
            for bins in sorted({int(match.group(1)) for match in found if match}):
                drawn = plot_reliability(run, Path(folder) / f"{split}-reliability{bins}.png", split, bins)
                if drawn is not None:
                    images[f"plots/{split}/reliability{bins}"] = _read_png(drawn)
            drawn = plot_attention_overlays(run, Path(folder) / f"{split}-attention.png", split)
            if drawn is not None:
                images[f"plots/{split}/attention"] = _read_png(drawn)
    return images


@dataclass
class FinalResult:
    """What a run's trackers record at its end (computed once for all of them)."""

    step: int
    hyperparameters: dict[str, bool | int | float | str]
    figures: dict[str, float]
    images: dict[str, Any] = field(default_factory=dict)


class TensorBoardTracker:
    """Event files in RUN_DIR/tensorboard/ through torch's SummaryWriter."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, resumed_after: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard hides what an earlier attempt logged from this epoch on (a
        # resumed run's killed epoch; every epoch of a run started afresh in the same directory).
        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=resumed_after + 1)
        self.last_logged: dict[str, int] = {}  # tag -> the step it was last logged at

    def log_record(self, record: dict[str, Any]) -> None:
        for key, value in numbers(record).items():
            self.writer.add_scalar(key, value, record["epoch"])
            self.last_logged[key] = record["epoch"]
        self.writer.flush()  # an epoch's points are on disk with its record: live curves, none lost to a kill

    def finish(self, result: FinalResult) -> None:
        from torch.utils.tensorboard.summary import hparams

        # In this run's own event file (SummaryWriter.add_hparams would open a sub-run):
        # the HParams table then reads the figures from this run's scalars.
        for part in hparams(result.hyperparameters, result.figures):
            self.writer.file_writer.add_summary(part)
        for key, value in result.figures.items():
            if self.last_logged.get(key) != result.step:  # the last record's figures are there already
                self.writer.add_scalar(key, value, result.step)
        for tag, image in result.images.items():
            self.writer.add_image(tag, image, result.step, dataformats="HWC")
        self.writer.flush()

    def close(self, failure: Exception | None = None) -> None:
        if failure is not None:
            self.writer.add_text("failed", str(failure))
        self.writer.close()


class WandbTracker:
    """A W&B run of its own (``reinit="create_new"``: fused arms each have one) in RUN_DIR/wandb/."""

    name = "wandb"

    def __init__(self, run_dir: Path, name: str, spec: AnySpec):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            dir=str(run_dir), name=name, group=grid_name(run_dir), job_type=spec.kind,
            project=os.environ.get("WANDB_PROJECT") or DEFAULT_WANDB_PROJECT,  # WANDB_MODE, WANDB_ENTITY: read by wandb
            config=spec.model_dump(mode="json"), reinit="create_new",
            settings=wandb.Settings(console="off"),  # fused arms share one stdout: no run should claim it
        )

    def log_record(self, record: dict[str, Any]) -> None:
        self.run.log(numbers(record), step=record["epoch"])

    def finish(self, result: FinalResult) -> None:
        if result.images:
            self.run.log({tag: self.wandb.Image(image) for tag, image in result.images.items()}, step=result.step)
        self.run.summary.update(result.figures)

    def close(self, failure: Exception | None = None) -> None:
        if failure is not None:
            self.run.summary["failed"] = str(failure)
        self.run.finish(exit_code=1 if failure is not None else 0)


class Trackers:
    """The trackers of one arm; every call goes to each. Empty (all calls do nothing) when
    the spec asks for none, and on ranks other than 0."""

    def __init__(self, trackers: list[Any] | None = None, spec: AnySpec | None = None, name: str = "", log: Log = print):
        self.trackers, self.spec, self.name, self.log = list(trackers or []), spec, name, log

    @classmethod
    def open(cls, spec: AnySpec, run_dir: Path, name: str, resumed_after: int = 0, log: Log = print) -> Trackers:
        """The trackers ``spec.tracking`` asks for, logging ``name`` (an arm's) from ``run_dir``;
        ``resumed_after``: the last saved epoch of a resumed run, which also goes on with the
        trackers its directory shows. A tracker the spec asks for whose package is missing
        is refused; one only carried over from before is skipped with a warning."""
        run_dir = Path(run_dir)
        for tracker in spec.tracking:
            if (problem := tracker_not_installed(tracker)) is not None:
                raise KdzooError(f"tracking: {problem}")
        carried = [t for t in (tracked_before(run_dir) if resumed_after else []) if t not in spec.tracking]
        openers = {
            "tensorboard": lambda: TensorBoardTracker(run_dir, resumed_after),
            "wandb": lambda: WandbTracker(run_dir, name, spec),
        }
        trackers = cls(spec=spec, name=name, log=log)
        for tracker in [*spec.tracking, *carried]:
            try:
                if tracker in carried and (problem := tracker_not_installed(tracker)) is not None:
                    raise ImportError(problem)
                trackers.trackers.append(openers[tracker]())
            except ImportError as exc:  # installed but broken is as good as missing
                if tracker in carried:  # not asked for this time: no reason to refuse the run
                    trackers._warn(tracker, exc)
                    continue
                trackers.close()
                raise KdzooError(f"tracking: {tracker} cannot be imported ({exc}): pip install 'kdzoo[{tracker}]'") from None
            except Exception as exc:  # e.g. W&B online without a login: the run itself can still go on
                trackers._warn(tracker, exc)
        return trackers

    def _warn(self, tracker: str, exc: Exception) -> None:
        self.log(f"warning: tracking: {tracker} failed for {self.name} ({type(exc).__name__}: {exc}); the run goes on without it")

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # the run matters more than its mirror: drop the tracker, once
                self.trackers.remove(tracker)
                self._warn(tracker.name, exc)
                try:
                    tracker.close()  # the tracker failed, not the run
                except Exception:
                    pass

    def log_record(self, record: dict[str, Any]) -> None:
        """One epoch's record (as appended to metrics.jsonl): its scalars at step = epoch."""
        self._each("log_record", record)

    def finish(self, summary: dict[str, Any]) -> None:
        """The end of the run: hyperparameters with the final figures, and the run's plots."""
        if not self.trackers:
            return
        result = FinalResult(self.spec.epochs, hyperparameters(self.spec), final_figures(summary))
        try:
            result.images = final_plots(self.name, summary, list(self.spec.eval.splits))
        except Exception as exc:  # no plots is no reason to lose the figures
            self._warn("plots", exc)
        self._each("finish", result)

    def close(self, failure: Exception | None = None) -> None:
        """Flush and close every tracker (a failed run's marked failed); safe to call twice."""
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            try:
                tracker.close(failure)
            except Exception as exc:
                self._warn(tracker.name, exc)
