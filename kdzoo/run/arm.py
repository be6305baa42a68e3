"""One arm of a training pass: the student (or the model a train run trains), its losses,
optimizer, schedule, metrics and run directory.

An arm owns everything a run trains and writes. What the arms of a pass share (the data,
the augmented batches, the teachers and their forward) belongs to the pass
(:mod:`kdzoo.run.trainer`). An arm is built in the order a run has always been built,
from the spec's seed, so the same arm built alone or next to others starts from the
same weights; it keeps its own global RNG stream (:class:`RngStream`) for dropout and
loss sampling, so its steps draw what they would draw alone.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdzoo import rundir
from kdzoo.api import ImageData, ModelOutputs, SetupContext
from kdzoo.api.keys import split_key, trained_role
from kdzoo.errors import KdzooError
from kdzoo.host import PluginHost
from kdzoo.host.build import build_augmentation, build_loss, build_metric, build_model, plugin_code
from kdzoo.run import distributed
from kdzoo.run.checkpoint import save_checkpoint, versions, write_json, write_text
from kdzoo.run.data import in_layout, to_float
from kdzoo.run.evaluator import Evaluator, forward_with_taps, generalisation_gap
from kdzoo.run.heads import record_head, student_predictor
from kdzoo.run.runtime import Runtime, compile_forward, wants_channels_last
from kdzoo.run.stages import Stage, plan_stages, saved_stage, stage_at, stage_optimizer
from kdzoo.run.state import load_state, save_state, state_meta
from kdzoo.run.step import LossTally, StepModule, divergence_error, wrap_ddp
from kdzoo.run.teachers import Teacher
from kdzoo.run.tracking import Trackers
from kdzoo.spec import AnySpec, TrainSpec


def is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class PassInputs:
    """What every arm of a pass shares: where it computes, the data and the teachers
    (frozen, placed, in their layout). ``frozen_logits``: the teachers' evaluation logits,
    per evaluation train-split size (the evaluator's cache, shared by the arms)."""

    runtime: Runtime
    data: ImageData
    teachers: list[Teacher]
    teacher_layouts: dict[str, bool]
    frozen_logits: dict[Any, dict] = field(default_factory=dict)


class RngStream:
    """One arm's global torch RNG state (CPU, and the CUDA device's), swapped in for its
    steps: arms of a pass draw dropout and loss samples as each would alone."""

    def __init__(self, device: torch.device):
        self.device = device
        self.capture()

    def capture(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None

    @contextmanager
    def active(self):
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
        try:
            yield
        finally:
            self.capture()


class Arm:
    """Trains ``spec``'s model (train) or student (distill) into ``run_dir``, one step at a time."""

    def __init__(self, spec: AnySpec, host: PluginHost, run_dir: Path, inputs: PassInputs, log=print, name: str | None = None):
        self.spec, self.host, self.inputs = spec, host, inputs
        self.run_dir = Path(run_dir)
        self.name = name or self.run_dir.name
        self.main = distributed.rank() == 0
        self.log = log if self.main else (lambda *_: None)  # one log, rank 0's
        registry, data, device, teachers = host.registry, inputs.data, inputs.runtime.device, inputs.teachers
        self.model_ref = spec.model if isinstance(spec, TrainSpec) else spec.student.model
        self.role = trained_role(spec.kind)
        torch.manual_seed(spec.seed if spec.init_seed is None else spec.init_seed)  # model initialisation
        self.network = build_model(registry, self.model_ref.name, self.model_ref.params, num_classes=data.num_classes, image_size=data.image_size)
        self.augmentation_component = registry.get("augmentation", spec.augmentation.name)
        self.augmentation = build_augmentation(registry, spec.augmentation.name, spec.augmentation.params)
        self.loss_components = [registry.get("loss", term.name) for term in spec.losses]
        self.losses = nn.ModuleList(build_loss(registry, term.name, term.params) for term in spec.losses)
        self.metric_components = [registry.get("metric", ref.name) for ref in spec.metrics]
        self.stages = plan_stages(spec)
        for term, loss in zip(spec.losses, self.losses):
            if loss.uses_teachers and not teachers:
                raise KdzooError(f"losses: '{term.name}' distils from teachers, but a {spec.kind} run has none")
        self.uses_peers = any(loss.uses_peers for loss in self.losses)
        self.channels_last = {self.role: wants_channels_last(spec, self.network), **inputs.teacher_layouts}
        self.network.to(device)
        if self.channels_last[self.role]:
            self.network.to(memory_format=torch.channels_last)
        n = len(data.train_labels)
        self.steps_per_epoch = max(1, n // spec.batch_size)
        # A fixed random subset: datasets stored class by class would otherwise give one class.
        limit = min(n, spec.eval.train_limit or n)
        self.train_eval_indices = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:limit].sort().values
        self.total_steps = self.steps_per_epoch * spec.epochs
        self._resolve_taps()
        self._setup_losses()
        self.losses.to(device)
        if distributed.active() and spec.sync_bn:
            if device.type == "cpu":  # after the losses' setup: its sample forward runs on each rank alone
                raise KdzooError("sync_bn: torch's SyncBatchNorm runs on GPUs only; set sync_bn: false on the CPU")
            self.network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.network)
        if spec.compile:  # after the losses' setup: its sample forward would compile for a batch of 8
            compile_forward(self.network)
        self.stage: Stage | None = None
        self.enter_stage(self.stages[0])  # its optimizer, weights and DOT split
        self.step_module = StepModule(self.network, self.losses, self.loss_components, self.student_taps)
        if distributed.active():  # broadcasts rank 0's parameters: every rank starts equal
            if self.channels_last[self.role]:  # connectors' gradients follow the features' layout: DDP's buckets must too
                self.losses.to(memory_format=torch.channels_last)
            self.step_module = wrap_ddp(self.step_module, device)
        # what the student predicts through: its own head, or a loss's (SimKD: projector + the teacher's classifier)
        self.head, self.predictor = student_predictor(self.network, spec.losses, self.loss_components, self.losses)
        roles = {self.role: self.predictor, **{t.role: t.network for t in teachers}}
        shared = inputs.frozen_logits.setdefault(limit, {})  # the train split's images depend on the limit
        self.evaluator = Evaluator(inputs.runtime, roles, self.channels_last, tuple(t.role for t in teachers), self.role, shared)
        # the loop's state: set by begin(), advanced by each step
        self.start_epoch = self.step = 0
        self.records: list[dict[str, Any]] = []
        self.final_metrics: dict[str, Any] = {}
        self.trackers = Trackers()  # opened by begin() (rank 0, as the spec's `tracking` asks)
        self.failure: Exception | None = None  # why the pass dropped the arm (drop)
        self.rng: RngStream | None = None  # None: the process's own stream (an arm trained alone)
        self.tally: LossTally | None = None
        self.started = 0.0

    # -- taps and connectors -------------------------------------------------------
    def _resolve_taps(self) -> None:
        teachers = self.inputs.teachers
        student_paths: list[str] = []
        teacher_paths: list[list[str]] = [[] for _ in teachers]
        for component, loss in zip(self.loss_components, self.losses):
            for i, teacher in enumerate(teachers or [None]):
                with plugin_code(component, "taps"):
                    s_paths, t_paths = loss.taps(self.network, teacher.network if teacher else None)
                student_paths += s_paths
                if teacher is not None:
                    teacher_paths[i] += t_paths
        self.student_taps = list(dict.fromkeys(student_paths))
        self.teacher_taps = [list(dict.fromkeys(p)) for p in teacher_paths]

    def _setup_losses(self) -> None:
        data, device, teachers = self.inputs.data, self.inputs.runtime.device, self.inputs.teachers
        sample = to_float(data.train_images[: min(8, len(data.train_labels))], device, self.channels_last[self.role])
        with torch.no_grad():
            _, student_feats = forward_with_taps(self.network, sample, self.student_taps)
            teacher_shapes = []
            for teacher, paths in zip(teachers, self.teacher_taps):
                _, feats = forward_with_taps(teacher.network, in_layout(sample, self.channels_last[teacher.role]), paths)
                teacher_shapes.append({k: v.shape for k, v in feats.items()})
        context = SetupContext(
            student_shapes={k: v.shape for k, v in student_feats.items()},
            teacher_shapes=teacher_shapes,
            student=self.network,
            teachers=[t.network for t in teachers],
            num_classes=data.num_classes,
            num_samples=len(data.train_labels),
            epochs=self.spec.epochs,
            steps=self.total_steps,
        )
        for component, loss in zip(self.loss_components, self.losses):
            with plugin_code(component, "setup"):
                loss.setup(context)

    # -- stages and state ----------------------------------------------------------
    def enter_stage(self, stage: Stage) -> None:
        """Train as ``stage`` says from the next step on (a new stage: a fresh optimizer over what it trains)."""
        if stage is not self.stage:
            self.stage, self.weights = stage, list(stage.weights)
            # DOT: task_terms says which terms are the task's (the rest distil); None: one gradient of the summed loss
            self.optimizer, self.task_terms = stage_optimizer(stage, self.network, self.losses, self.spec.losses)

    def save_state(self, epoch: int, step: int) -> None:
        if self.main:
            save_state(self.run_dir, epoch, step, self.network, self.losses, self.optimizer, self.spec.model_dump(mode="json"),
                       distributed.world_size(), stage=self.stage.meta(epoch))

    def load_state(self, force: bool = False) -> tuple[int, int]:
        meta = state_meta(self.run_dir)
        if meta is not None:  # the optimizer the state was saved from: its stage's
            self.enter_stage(saved_stage(self.stages, meta))
        return load_state(self.run_dir, self.network, self.losses, self.optimizer, self.spec.model_dump(mode="json"), force,
                          world_size=distributed.world_size(), log=self.log)

    def _write_metrics(self) -> None:
        # Rewritten whole and renamed (atomic): a kill never leaves a truncated history.
        if self.main:
            write_text(self.run_dir / rundir.METRICS_FILE, "".join(json.dumps(r) + "\n" for r in self.records))

    def begin(self, resume: bool, force: bool) -> None:
        """Where this arm starts: after its last saved epoch when resuming, else at 0."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        metrics_path = self.run_dir / rundir.METRICS_FILE
        self.start_epoch, self.step = self.load_state(force) if resume else (0, 0)
        self.records = []
        if self.start_epoch and metrics_path.exists():
            # Drop records of an epoch whose state was never saved (crash in between).
            try:
                records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
                self.records = [r for r in records if r["epoch"] <= self.start_epoch]
            except (ValueError, KeyError, TypeError) as exc:
                raise KdzooError(f"--resume: {metrics_path} is not a kdzoo metrics history ({exc}); restore it or start afresh") from None
        self._write_metrics()
        if self.start_epoch:
            self.log(f"resuming {self.run_dir} after epoch {self.start_epoch}")
        if self.main:
            self.trackers = Trackers.open(self.spec, self.run_dir, self.name, self.start_epoch, log=self.log)
        self.started = time.perf_counter()

    def drop(self, error: Exception) -> None:
        """The pass drops this arm: ``error`` is why; its trackers end here, marked failed."""
        self.failure = error
        self.trackers.close(error)

    # -- one step ------------------------------------------------------------------
    def rng_scope(self):
        return nullcontext() if self.rng is None else self.rng.active()

    def begin_epoch(self, fused: bool) -> None:
        # Every epoch takes steps_per_epoch steps: the step tells the epoch, hence the stage.
        self.enter_stage(stage_at(self.stages, self.step // self.steps_per_epoch))
        self.network.train(not self.stage.student_frozen)  # a frozen student keeps its BatchNorm statistics
        self.losses.train()
        self.tally = LossTally(["loss", *(f"loss/{t.name}" for t in self.spec.losses)], self.inputs.runtime.device)
        self.rng = RngStream(self.inputs.runtime.device) if fused else None  # the epoch's seed, just set

    @property
    def layout(self) -> bool:
        """Whether this arm's student runs channels_last."""
        return self.channels_last[self.role]

    def student_outputs(self, images: Tensor) -> ModelOutputs:
        """The student's forward alone (a pass whose losses read peers: all students first)."""
        with self.inputs.runtime.autocast():
            return self.step_module.student_outputs(images)

    def train_step(self, images: Tensor, teachers: list[ModelOutputs], targets: Tensor, index: Tensor, epoch: int,
                   student: ModelOutputs | None = None, peers: dict[str, ModelOutputs] | None = None) -> None:
        # The stage's lr, epoch and step counts, and (in a run with stages) its name and the terms it computes.
        lr, counts, extra = self.stage.at_step(epoch, self.step, self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.inputs.runtime.autocast():
            extra.update({} if student is None else {"student": student, "peers": peers})
            terms = self.step_module(images, teachers, targets, index, *counts, **extra)
        weighted = [None if t is None else w * t for w, t in zip(self.weights, terms)]
        total = sum(x for x in weighted if x is not None)
        self.tally.add(self.step, total, [total.new_zeros(()) if t is None else t for t in terms])  # on the device: no wait
        self.optimizer.zero_grad(set_to_none=True)
        if self.task_terms is None:
            total.backward()
        else:  # DOT: the distillation gradient first, then the task's (mdistiller's order)
            sum(x for x, task in zip(weighted, self.task_terms) if not task and x is not None).backward(retain_graph=True)
            self.optimizer.stash_distill_grads()
            sum(x for x, task in zip(weighted, self.task_terms) if task and x is not None).backward()
        self.optimizer.step()
        self.step += 1

    def stop_if_diverged(self, epoch: int, cause: Exception | None = None) -> None:
        """Raise the divergence error if a step's loss was not finite. On every rank at the
        same steps (a collective), except with a ``cause`` (one process: a step failed)."""
        bad = self.tally.first_bad()
        if (bad is not None) if cause is not None else distributed.any_rank(bad is not None):
            raise divergence_error(self.spec.losses, rundir.state_file(self.run_dir), epoch, bad) from cause

    def epoch_losses(self) -> dict[str, float]:
        return self.stage.computed_figures(distributed.mean_over_ranks(self.tally.means()), self.spec.losses)

    def end_epoch(self, epoch: int, losses: dict[str, float], train_time: float) -> dict[str, Any]:
        """Evaluate (when due), append the epoch's record and save the state."""
        spec = self.spec
        record: dict[str, Any] = {"epoch": epoch + 1, **({} if self.stage.name is None else {"stage": self.stage.name}),
                                  "lr": self.optimizer.param_groups[0]["lr"], **losses, "train_time_s": round(train_time, 3)}
        last = epoch + 1 == spec.epochs
        if last or (epoch + 1) % spec.eval.every == 0:
            found = self.evaluate(final=last, epoch=epoch)
            record.update({k: v for k, v in found.items() if is_scalar(v)})
            if last:
                self.final_metrics = found
        record["images_per_s"] = round(self.steps_per_epoch * spec.batch_size / train_time, 1)
        self.records.append(record)
        self._write_metrics()
        self.trackers.log_record(record)
        self.save_state(epoch + 1, self.step)
        return record

    # -- evaluation and the end ------------------------------------------------------
    def evaluate(self, final: bool, epoch: int | None = None) -> dict[str, Any]:
        spec, data = self.spec, self.inputs.data
        self.predictor.eval()  # the student, and the head it predicts through (if a loss supplies one)
        # Rank 0's BatchNorm statistics (the student's, the connectors'): every rank evaluates, and holds, one model.
        distributed.broadcast_buffers(self.network)
        distributed.broadcast_buffers(self.losses)
        results: dict[str, Any] = {}
        for split in spec.eval.splits:
            built = [(c, build_metric(self.host.registry, ref.name, ref.params)) for c, ref in zip(self.metric_components, spec.metrics)]
            metrics = [(c, m) for c, m in built if final or not getattr(m, "final_only", False)]
            if split == "train":
                keep = self.train_eval_indices
                images, labels = data.train_images[keep], data.train_labels[keep]
                masks = None if data.train_masks is None else data.train_masks[keep]
                aug = None
            else:
                images, labels, masks = data.test_images, data.test_labels, data.test_masks
                aug = self.augmentation if split == "test_aug" else None
            found = self.evaluator.run(split, images, labels, masks if aug is None else None, metrics, aug, aug_seed=spec.seed + 7919, epoch=epoch)
            results.update({split_key(split, k): v for k, v in found.items()})
        return results

    def finish(self, fused_with: list[str]) -> dict[str, Any]:
        """Publish the checkpoint and the summary; the run is finished."""
        if not self.final_metrics:  # resumed after the last epoch had already finished
            self.final_metrics = self.evaluate(final=True)
        return self._finish(self.final_metrics, time.perf_counter() - self.started, fused_with)

    def _finish(self, final: dict[str, Any], seconds: float, fused_with: list[str]) -> dict[str, Any]:
        role, spec, data, records = self.role, self.spec, self.inputs.data, self.records
        world_size, rank_batch = distributed.world_size(), spec.batch_size // distributed.world_size()
        summary: dict[str, Any] = {
            "kind": spec.kind,
            "name": spec.name,
            "role": role,
            "epochs": spec.epochs,
            "seed": spec.seed,
            "train_images": len(data.train_labels),
            "test_images": len(data.test_labels),
            "parameters": sum(p.numel() for p in self.network.parameters()),
            "connector_parameters": sum(p.numel() for p in self.losses.parameters()),
            "wall_time_s": round(seconds, 2),
            "train_time_s": round(sum(r["train_time_s"] for r in records), 2),
            "precision": "bf16" if self.inputs.runtime.autocast_dtype else "fp32",
            "device": str(self.inputs.runtime.device),
            "world_size": world_size,
            "rank_batch_size": rank_batch,
            "final": final,
            "teachers": {t.role: {"checkpoint": t.source, "metrics": t.metrics} for t in self.inputs.teachers},
        }
        if fused_with:  # trained in one pass with these arms (their times are the pass's)
            summary["fused_with"] = fused_with
        summary.update(generalisation_gap(records, role))
        tensors = {f"{rundir.BODY_PREFIX}{k}": v for k, v in self.network.body.state_dict().items()}
        tensors.update({f"{rundir.LOSSES_PREFIX}{k}": v for k, v in self.losses.state_dict().items()})
        manifest = {
            "model": {"name": self.model_ref.name, "params": self.model_ref.params},
            "num_classes": data.num_classes,
            "classes": data.classes,
            "image_size": data.image_size,
            "seed": spec.seed,
            "world_size": world_size,
            "rank_batch_size": rank_batch,
            "spec": spec.model_dump(mode="json"),
            "versions": versions(self.host.component_versions()),
            "plugin_files": self.host.plugin_files(),
            "metrics": {k: v for k, v in final.items() if is_scalar(v)},
        }
        record_head(self.head, tensors, manifest, summary)  # the head the student predicts through, if a loss supplies one
        if self.network.weights_source:  # pretrained: where the starting weights came from
            manifest["initial_weights"] = self.network.weights_source
        if self.main:
            save_checkpoint(self.run_dir, tensors, manifest)
            # No indentation: attention overlays and reliability bins make it megabytes otherwise.
            write_json(self.run_dir / rundir.SUMMARY_FILE, summary, indent=None)
            self.trackers.finish(summary)  # after the run's own files: a tracker never holds them up
            self.trackers.close()
        distributed.barrier()  # the run is finished (files published) when any rank returns
        return summary

