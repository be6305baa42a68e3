"""The training loop: one plain, readable loop for training and for distillation.

A train run is a distill run with no teachers and the role name "model". Teachers
are frozen, in eval mode, and run under inference mode; their tapped outputs are
cloned out of inference mode so losses can use them in autograd graphs. Plugin code
(loss taps, setup and forward, augmentation, metrics) runs inside ``plugin_code``
guards, so a failure names the component, its plugin, the phase, epoch and step.

Several processes (torchrun): ``batch_size`` stays the global batch. Every rank draws
the same shuffled order from the (seed, epoch) generator and takes its contiguous
slice of each global batch; augmentation, dropout and loss sampling use a generator of
(seed, epoch, rank). The student and the losses train under one DDP wrapper (see
:mod:`kdzoo.run.step`); teachers stay frozen on every rank. Only rank 0 writes files.

No step waits for the device: batches come from :class:`~kdzoo.run.data.TrainBatches`, loss
figures and the non-finite flag stay on it (:class:`~kdzoo.run.step.LossTally`) and are read
every ``CHECK_EVERY`` steps and at the end of each epoch, on every rank at the same steps.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from kdzoo import rundir
from kdzoo.api import SetupContext
from kdzoo.api.keys import metric_key, split_key, trained_role
from kdzoo.errors import KdzooError
from kdzoo.host import PluginHost
from kdzoo.host.build import build_augmentation, build_loss, build_metric, build_model, plugin_code
from kdzoo.run import distributed
from kdzoo.run.checkpoint import save_checkpoint, versions, write_json, write_text
from kdzoo.run.data import TrainBatches, in_layout, load_data, to_float
from kdzoo.run.evaluator import Evaluator, forward_with_taps
from kdzoo.run.runtime import compile_forward, select_runtime, wants_channels_last
from kdzoo.run.schedule import epoch_seed, lr_factor, make_optimizer
from kdzoo.run.state import load_state, save_state
from kdzoo.run.step import CHECK_EVERY, LossTally, StepModule, divergence_error, teacher_outputs, wrap_ddp
from kdzoo.run.teachers import Teacher
from kdzoo.spec import AnySpec, TrainSpec


def is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Trainer:
    """Trains ``spec``'s model (train) or student (distill) in ``run_dir``."""

    def __init__(self, spec: AnySpec, host: PluginHost, run_dir: Path, teachers: list[Teacher], log=print):
        self.spec = spec
        self.host = host
        self.run_dir = Path(run_dir)
        self.teachers = teachers
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.main = self.rank == 0
        self.log = log if self.main else (lambda *_: None)  # one log, rank 0's
        registry = host.registry
        self.runtime = select_runtime(spec)
        self.data = load_data(spec.data, registry)
        if spec.batch_size % self.world_size:
            raise KdzooError(
                f"batch_size: {spec.batch_size} is the global batch, split over {self.world_size} processes: "
                f"make it a multiple of {self.world_size}"
            )
        self.rank_batch = spec.batch_size // self.world_size
        model_ref = spec.model if isinstance(spec, TrainSpec) else spec.student.model
        self.model_ref = model_ref
        self.role = trained_role(spec.kind)
        torch.manual_seed(spec.seed)  # model initialisation
        self.network = build_model(registry, model_ref.name, model_ref.params, num_classes=self.data.num_classes, image_size=self.data.image_size)
        self.augmentation_component = registry.get("augmentation", spec.augmentation.name)
        self.augmentation = build_augmentation(registry, spec.augmentation.name, spec.augmentation.params)
        self.loss_components = [registry.get("loss", term.name) for term in spec.losses]
        self.losses = nn.ModuleList(build_loss(registry, term.name, term.params) for term in spec.losses)
        self.metric_components = [registry.get("metric", ref.name) for ref in spec.metrics]
        self.weights = [term.weight for term in spec.losses]
        for term, loss in zip(spec.losses, self.losses):
            if loss.uses_teachers and not teachers:
                raise KdzooError(f"losses: '{term.name}' distils from teachers, but a {spec.kind} run has none")
        self.channels_last = {self.role: wants_channels_last(spec, self.network)}
        for teacher in teachers:
            self.channels_last[teacher.role] = wants_channels_last(spec, teacher.network)
        self.network.to(self.runtime.device)
        if self.channels_last[self.role]:
            self.network.to(memory_format=torch.channels_last)
        for teacher in teachers:
            teacher.network.to(self.runtime.device).eval().requires_grad_(False)
            if self.channels_last[teacher.role]:
                teacher.network.to(memory_format=torch.channels_last)
        n = len(self.data.train_labels)
        self.steps_per_epoch = max(1, n // spec.batch_size)
        # A fixed random subset: datasets stored class by class would otherwise give one class.
        limit = min(n, spec.eval.train_limit or n)
        self.train_eval_indices = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:limit].sort().values
        self.total_steps = self.steps_per_epoch * spec.epochs
        self._resolve_taps()
        self._setup_losses()
        self.losses.to(self.runtime.device)
        if distributed.active() and spec.sync_bn:
            self.network = self._sync_batchnorm(self.network)
        for network in [self.network, *(t.network for t in teachers)] if spec.compile else []:
            compile_forward(network)  # after the losses' setup: its sample forward would compile for a batch of 8
        self.batches = TrainBatches(self.data.train_images, self.data.train_labels, self.runtime.device)  # models placed first
        self.optimizer = make_optimizer(spec, list(self.network.parameters()) + list(self.losses.parameters()))
        self.step_module = StepModule(self.network, self.losses, self.loss_components, self.student_taps)
        if distributed.active():  # broadcasts rank 0's parameters: every rank starts equal
            if self.channels_last[self.role]:  # connectors' gradients follow the features' layout: DDP's buckets must too
                self.losses.to(memory_format=torch.channels_last)
            self.step_module = wrap_ddp(self.step_module, self.runtime.device)
        roles = {self.role: self.network, **{t.role: t.network for t in teachers}}
        self.evaluator = Evaluator(self.runtime, roles, self.channels_last, tuple(t.role for t in teachers), self.role)

    def _sync_batchnorm(self, network):
        """BatchNorm -> SyncBatchNorm (batch statistics over the global batch). After the
        losses' setup: its sample forward runs on each rank alone."""
        if self.runtime.device.type == "cpu":
            raise KdzooError("sync_bn: torch's SyncBatchNorm runs on GPUs only; set sync_bn: false on the CPU")
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)

    # -- taps and connectors -------------------------------------------------------
    def _resolve_taps(self) -> None:
        student_paths: list[str] = []
        teacher_paths: list[list[str]] = [[] for _ in self.teachers]
        for component, loss in zip(self.loss_components, self.losses):
            for i, teacher in enumerate(self.teachers or [None]):
                with plugin_code(component, "taps"):
                    s_paths, t_paths = loss.taps(self.network, teacher.network if teacher else None)
                student_paths += s_paths
                if teacher is not None:
                    teacher_paths[i] += t_paths
        self.student_taps = list(dict.fromkeys(student_paths))
        self.teacher_taps = [list(dict.fromkeys(p)) for p in teacher_paths]

    def _setup_losses(self) -> None:
        sample = to_float(self.data.train_images[: min(8, len(self.data.train_labels))], self.runtime.device, self.channels_last[self.role])
        with torch.no_grad():
            _, student_feats = forward_with_taps(self.network, sample, self.student_taps)
            teacher_shapes = []
            for teacher, paths in zip(self.teachers, self.teacher_taps):
                _, feats = forward_with_taps(teacher.network, in_layout(sample, self.channels_last[teacher.role]), paths)
                teacher_shapes.append({k: v.shape for k, v in feats.items()})
        context = SetupContext(
            student_shapes={k: v.shape for k, v in student_feats.items()},
            teacher_shapes=teacher_shapes,
            student=self.network,
            teachers=[t.network for t in self.teachers],
            num_classes=self.data.num_classes,
            num_samples=len(self.data.train_labels),
            epochs=self.spec.epochs,
            steps=self.total_steps,
        )
        for component, loss in zip(self.loss_components, self.losses):
            with plugin_code(component, "setup"):
                loss.setup(context)

    # -- state ---------------------------------------------------------------------
    def save_state(self, epoch: int, step: int) -> None:
        if self.main:
            save_state(self.run_dir, epoch, step, self.network, self.losses, self.optimizer, self.spec.model_dump(mode="json"), self.world_size)

    def load_state(self, force: bool = False) -> tuple[int, int]:
        return load_state(self.run_dir, self.network, self.losses, self.optimizer, self.spec.model_dump(mode="json"), force,
                          world_size=self.world_size, log=self.log)

    # -- loop ------------------------------------------------------------------------
    def _generators(self, epoch: int) -> tuple[torch.Generator, torch.Generator]:
        """(data order, augmentation): one generator in one process on the CPU, as always (on CUDA
        the augmentation's is on the GPU); with several, the order is shared and augmentation is the rank's own."""
        seed = epoch_seed(self.spec.seed, epoch)
        order = torch.Generator().manual_seed(seed)
        if not distributed.active():
            torch.manual_seed(seed)
            return order, order if self.batches.where == "host" else self.batches.generator(seed)
        own = distributed.rank_seed(self.spec.seed, epoch, self.rank)
        torch.manual_seed(own)  # dropout, CRD's negatives: different per rank
        return order, self.batches.generator(own)

    def train_epoch(self, epoch: int, step: int, progress) -> tuple[int, dict[str, float]]:
        spec, device = self.spec, self.runtime.device
        order, generator = self._generators(epoch)
        self.network.train()
        self.losses.train()
        tally = LossTally(["loss", *(f"loss/{t.name}" for t in spec.losses)], device)
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{spec.epochs}", leave=False, disable=progress if self.main else True)  # None: only on a TTY
        for batch_uint8, targets, index in self.batches.epoch(spec.batch_size, order, self.rank, self.world_size):
            try:
                with plugin_code(self.augmentation_component, "augmentation", epoch=epoch, step=step):
                    augmented = self.augmentation(batch_uint8, generator)
                images = to_float(augmented, device, self.channels_last[self.role])
                lr = spec.optimizer.lr * lr_factor(spec, step, self.total_steps, self.steps_per_epoch)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                with self.runtime.autocast():
                    teachers = teacher_outputs(self.teachers, self.teacher_taps, images, batch_uint8, generator, device, self.channels_last)
                    terms = self.step_module(images, teachers, targets, index, epoch, spec.epochs, step, self.total_steps)
                total = sum(w * t for w, t in zip(self.weights, terms))
                tally.add(step, total, terms)  # on the device: no wait
                self.optimizer.zero_grad(set_to_none=True)
                total.backward()
                self.optimizer.step()
            except Exception as exc:
                if not distributed.active():  # a step after a non-finite one may fail on NaN weights: the first bad step is the story
                    self._stop_if_diverged(tally, epoch, cause=exc)
                raise
            step += 1
            bar.update(1)
            if tally.count % CHECK_EVERY == 0:
                self._stop_if_diverged(tally, epoch)
        bar.close()
        self._stop_if_diverged(tally, epoch)
        return step, distributed.mean_over_ranks(tally.means())

    def _stop_if_diverged(self, tally: LossTally, epoch: int, cause: Exception | None = None) -> None:
        """Raise the divergence error if a step's loss was not finite. On every rank at the
        same steps (a collective), except with a ``cause`` (one process: a step failed)."""
        bad = tally.first_bad()
        if (bad is not None) if cause is not None else distributed.any_rank(bad is not None):
            raise divergence_error(self.spec.losses, rundir.state_file(self.run_dir), epoch, bad) from cause

    def evaluate(self, final: bool, epoch: int | None = None) -> dict[str, Any]:
        spec = self.spec
        data = self.data
        self.network.eval()
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

    def _write_metrics(self, path: Path, records: list[dict[str, Any]]) -> None:
        # Rewritten whole and renamed (atomic): a kill never leaves a truncated history.
        if self.main:
            write_text(path, "".join(json.dumps(r) + "\n" for r in records))

    def fit(self, resume: bool = False, progress_disabled: bool | None = None, force: bool = False) -> dict[str, Any]:
        spec = self.spec
        self.run_dir.mkdir(parents=True, exist_ok=True)
        metrics_path = self.run_dir / rundir.METRICS_FILE
        start_epoch, step = self.load_state(force) if resume else (0, 0)
        records = []
        if start_epoch and metrics_path.exists():
            # Drop records of an epoch whose state was never saved (crash in between).
            try:
                records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
                records = [r for r in records if r["epoch"] <= start_epoch]
            except (ValueError, KeyError, TypeError) as exc:
                raise KdzooError(f"--resume: {metrics_path} is not a kdzoo metrics history ({exc}); restore it or start afresh") from None
        self._write_metrics(metrics_path, records)
        if start_epoch:
            self.log(f"resuming {self.run_dir} after epoch {start_epoch}")
        started = time.perf_counter()
        epochs_bar = tqdm(range(start_epoch, spec.epochs), desc=self.run_dir.name, disable=progress_disabled if self.main else True, leave=False)
        final_metrics: dict[str, Any] = {}
        for epoch in epochs_bar:
            t0 = time.perf_counter()
            step, losses = self.train_epoch(epoch, step, progress_disabled)
            train_time = time.perf_counter() - t0
            record: dict[str, Any] = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"], **losses, "train_time_s": round(train_time, 3)}
            last = epoch + 1 == spec.epochs
            if last or (epoch + 1) % spec.eval.every == 0:
                found = self.evaluate(final=last, epoch=epoch)
                record.update({k: v for k, v in found.items() if is_scalar(v)})
                if last:
                    final_metrics = found
            record["images_per_s"] = round(self.steps_per_epoch * spec.batch_size / train_time, 1)
            records.append(record)
            self._write_metrics(metrics_path, records)
            self.save_state(epoch + 1, step)
            shown = {k: record[k] for k in (metric_key("test", "top1", self.role), "loss") if k in record}
            epochs_bar.set_postfix({k.split("/")[-2] if "/" in k else k: f"{v:.3f}" for k, v in shown.items()})
        if not final_metrics:  # resumed after the last epoch had already finished
            final_metrics = self.evaluate(final=True)
        return self._finish(records, final_metrics, time.perf_counter() - started)

    def _finish(self, records: list[dict[str, Any]], final: dict[str, Any], seconds: float) -> dict[str, Any]:
        role = self.role
        summary: dict[str, Any] = {
            "kind": self.spec.kind,
            "name": self.spec.name,
            "role": role,
            "epochs": self.spec.epochs,
            "seed": self.spec.seed,
            "train_images": len(self.data.train_labels),
            "test_images": len(self.data.test_labels),
            "parameters": sum(p.numel() for p in self.network.parameters()),
            "connector_parameters": sum(p.numel() for p in self.losses.parameters()),
            "wall_time_s": round(seconds, 2),
            "train_time_s": round(sum(r["train_time_s"] for r in records), 2),
            "precision": "bf16" if self.runtime.autocast_dtype else "fp32",
            "device": str(self.runtime.device),
            "world_size": self.world_size,
            "rank_batch_size": self.rank_batch,
            "final": final,
            "teachers": {t.role: {"checkpoint": t.source, "metrics": t.metrics} for t in self.teachers},
        }
        summary.update(generalisation_gap(records, role))
        tensors = {f"{rundir.BODY_PREFIX}{k}": v for k, v in self.network.body.state_dict().items()}
        tensors.update({f"{rundir.LOSSES_PREFIX}{k}": v for k, v in self.losses.state_dict().items()})
        manifest = {
            "model": {"name": self.model_ref.name, "params": self.model_ref.params},
            "num_classes": self.data.num_classes,
            "classes": self.data.classes,
            "image_size": self.data.image_size,
            "seed": self.spec.seed,
            "world_size": self.world_size,
            "rank_batch_size": self.rank_batch,
            "spec": self.spec.model_dump(mode="json"),
            "versions": versions(self.host.component_versions()),
            "plugin_files": self.host.plugin_files(),
            "metrics": {k: v for k, v in final.items() if is_scalar(v)},
        }
        if self.main:
            save_checkpoint(self.run_dir, tensors, manifest)
            # No indentation: attention overlays and reliability bins make it megabytes otherwise.
            write_json(self.run_dir / rundir.SUMMARY_FILE, summary, indent=None)
        distributed.barrier()  # the run is finished (files published) when any rank returns
        return summary


def generalisation_gap(records: list[dict[str, Any]], role: str) -> dict[str, float]:
    """The study's gap: train top-1 at the best-test epoch minus the best test top-1; and at the last epoch."""
    train_key, test_key = metric_key("train", "top1", role), metric_key("test", "top1", role)
    scored = [r for r in records if test_key in r]
    out: dict[str, float] = {}
    if not scored:
        return out
    best = max(scored, key=lambda r: r[test_key])
    out["best_test_top1"] = best[test_key]
    out["best_epoch"] = best["epoch"]
    if train_key in best:
        out["gap_at_best"] = best[train_key] - best[test_key]
    last = scored[-1]
    if train_key in last:
        out["gap_final"] = last[train_key] - last[test_key]
    return out
