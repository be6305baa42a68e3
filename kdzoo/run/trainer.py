"""The training loop: one plain loop for training, distilling, and for fused arms.

A *pass* trains one or more arms (:class:`~kdzoo.run.arm.Arm`) that share the data, the
augmentation, the batch size, the epochs, the seed and the teachers (the rule is in
:mod:`kdzoo.run.fusion`): each batch is drawn and augmented once, each teacher runs
forward once (tapped at every path any arm asked for), and every arm then takes its
own step, forward then backward at once, so memory holds one student's activations
plus the teachers' outputs. A run on its own is a pass of one arm; a grid fuses its
arms by default (``kdzoo run --fuse off`` runs them one by one).

Fused arms train bit for bit as they would alone (on the CPU; tests compare weights and
figures): each arm is built from the spec's seed in the usual order, gets its own copy
of the teachers' outputs (taps of its own), and draws dropout and loss samples from its
own RNG stream; the data order and the augmentation come from the epoch's generator,
once per batch, as for one arm. Augmentations draw only from the generator they are
given (the plugin API says so): one drawing from torch's global RNG would see another
stream in a fused pass. An arm that fails (a loss that is not finite, a plugin error)
is dropped from the pass and the others go on. Resuming, each arm starts after its own
last saved epoch and joins the pass at that epoch.

Further views (``Loss.views``, e.g. the strong view of CRLD): each distinct view policy
of the pass's losses is drawn once per batch from the same uint8 images, with a
generator of its own (from the seed, the epoch, the rank and the policy), so the main
augmentation's stream, and hence every arm that asks for no view, is the same with or
without it, fused or alone, resumed or not. The teachers run once per view and batch;
each arm's student runs on it inside its step.

A train run is a distill run with no teachers and the role name "model". Teachers are
frozen, in eval mode, under inference mode. Several processes (torchrun): ``batch_size``
stays the global batch; every rank draws the same order from the (seed, epoch) generator
and takes its slice of each global batch; augmentation, dropout and loss sampling use a
generator of (seed, epoch, rank); each arm's student and losses train under one DDP
wrapper (:mod:`kdzoo.run.step`). Only rank 0 writes files. No step waits for the device:
loss figures and the non-finite flag stay on it and are read every ``CHECK_EVERY``
steps and at the end of each epoch, on every rank at the same steps.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from tqdm.auto import tqdm

from kdzoo.api import ImageData, ModelOutputs
from kdzoo.api.keys import metric_key
from kdzoo.errors import KdzooError, SpecError, TrainingError
from kdzoo.host import PluginHost
from kdzoo.host.build import build_augmentation, plugin_code
from kdzoo.run import distributed
from kdzoo.run.arm import Arm, PassInputs
from kdzoo.run.data import Layouts, TrainBatches, load_data, to_float
from kdzoo.run.runtime import compile_forward, select_runtime, wants_channels_last
from kdzoo.run.schedule import epoch_seed
from kdzoo.run.step import CHECK_EVERY, StepModule, TeacherForward, teacher_forward, teacher_forward_on_view, teacher_view, view_key
from kdzoo.run.teachers import Teacher
from kdzoo.spec import AnySpec

OnFailure = Callable[[Arm, TrainingError], None]


def pass_inputs(spec: AnySpec, host: PluginHost, teachers: list[Teacher], data: ImageData | None = None) -> PassInputs:
    """The runtime, the data (loaded unless given) and the placed, frozen teachers of a pass
    whose arms share ``spec``'s."""
    runtime = select_runtime(spec)
    data = load_data(spec.data, host.registry) if data is None else data
    world_size = distributed.world_size()
    if spec.batch_size % world_size:
        raise KdzooError(
            f"batch_size: {spec.batch_size} is the global batch, split over {world_size} processes: "
            f"make it a multiple of {world_size}"
        )
    layouts = {t.role: wants_channels_last(spec, t.network) for t in teachers}
    for teacher in teachers:
        teacher.network.to(runtime.device).eval().requires_grad_(False)
        if layouts[teacher.role]:
            teacher.network.to(memory_format=torch.channels_last)
    return PassInputs(runtime, data, teachers, layouts)


def step_core(arm: Arm) -> StepModule:
    """An arm's StepModule, also under DDP (which wraps it)."""
    return getattr(arm.step_module, "module", arm.step_module)


def view_augmentations(arms: list[Arm], registry) -> dict[str, tuple[Any, Any]]:
    """view key -> (component, built augmentation) of every further view the arms' losses
    ask for (``Loss.views``), built once for the pass; a policy kdzoo cannot build is
    refused before the first step."""
    built: dict[str, tuple[Any, Any]] = {}
    for arm in arms:
        for term, asked in zip(arm.spec.losses, step_core(arm).loss_views):
            for name, request in asked.items():
                key = view_key(request)
                if key in built:
                    continue
                where = f"losses: '{term.name}' asks for a view '{name}' augmented by '{request.augmentation}'"
                try:
                    component = registry.get("augmentation", request.augmentation)
                    params = component.validate_params(request.params)
                except KdzooError as exc:
                    raise SpecError(arm.spec.name or arm.name, [f"{where}: {exc}"]) from None
                except ValidationError as exc:
                    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                    raise SpecError(arm.spec.name or arm.name, [f"{where} {request.params}: {problems}"]) from None
                built[key] = (component, build_augmentation(registry, request.augmentation, params))
    return built


def view_seed(seed: int, key: str) -> int:
    """The seed of a view's generator in an epoch: apart from the main augmentation's and
    from every other view's, the same whichever arms share the pass."""
    digest = hashlib.sha256(f"kdzoo-view:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class TrainingPass:
    """Trains ``arms`` (built on ``inputs``) together, one batch at a time."""

    def __init__(self, inputs: PassInputs, arms: list[Arm], log=print):
        self.inputs, self.arms = inputs, arms
        self.spec = arms[0].spec  # what the arms share is the same in every arm's spec
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.main = self.rank == 0
        self.log = log if self.main else (lambda *_: None)
        self.fused = len(arms) > 1
        self.augmentation_component, self.augmentation = arms[0].augmentation_component, arms[0].augmentation
        self.teacher_taps = [list(dict.fromkeys(p for arm in arms for p in arm.teacher_taps[i])) for i in range(len(inputs.teachers))]
        self.peers = any(arm.uses_peers for arm in arms)
        if self.peers and (len(arms) < 2 or distributed.active()):
            names = sorted({t.name for arm in arms if arm.uses_peers for t, loss in zip(arm.spec.losses, arm.losses) if loss.uses_peers})
            raise KdzooError(
                f"losses: {', '.join(names)} learn from the other students of a fused pass: run them in a grid whose arms "
                "train together (a matrix over students or losses, without --fuse off), in one process"
            )
        self.views = view_augmentations(arms, arms[0].host.registry)  # further views: key -> (component, augmentation)
        for teacher in inputs.teachers if self.spec.compile else []:
            compile_forward(teacher.network)  # after every arm's setup: its sample forward would compile for a batch of 8
        self.batches = TrainBatches(inputs.data.train_images, inputs.data.train_labels, inputs.runtime.device)  # models placed first
        self.steps_per_epoch = arms[0].steps_per_epoch
        self.on_failure: OnFailure | None = None

    def generators(self, epoch: int) -> tuple[torch.Generator, torch.Generator]:
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

    def view_generators(self, epoch: int) -> dict[str, torch.Generator]:
        """One generator per further view of the pass, for the epoch (the rank's own with several processes)."""
        seed = distributed.rank_seed(self.spec.seed, epoch, self.rank) if distributed.active() else epoch_seed(self.spec.seed, epoch)
        return {key: self.batches.generator(view_seed(seed, key)) for key in self.views}

    def _draw_views(self, batch_uint8, generators: dict[str, torch.Generator], epoch: int, step: int) -> dict[str, tuple[Layouts, TeacherForward]]:
        """Every further view of the batch, with the teachers' forward on it (once for all arms)."""
        drawn = {}
        layout = self.arms[0].layout
        for key, (component, augmentation) in self.views.items():
            with plugin_code(component, "augmentation", epoch=epoch, step=step):
                augmented = augmentation(batch_uint8, generators[key])
            images = Layouts(to_float(augmented, self.inputs.runtime.device, layout), layout)
            with self.inputs.runtime.autocast():
                forward = teacher_forward_on_view(self.inputs.teachers, self.teacher_taps, images, self.inputs.teacher_layouts)
            drawn[key] = (images, forward)
        return drawn

    @contextmanager
    def _views_of_step(self, arm: Arm, drawn: dict[str, tuple[Layouts, TeacherForward]]):
        """``arm``'s step sees the views its losses asked for: its layout, its teachers' taps."""
        core = step_core(arm)
        views = {key: (drawn[key][0](arm.layout), teacher_view(drawn[key][1], arm.teacher_taps)) for key in core.view_requests}
        with core.views_of_step(views):
            yield

    # -- failures ------------------------------------------------------------------
    def _drop(self, arm: Arm, error: TrainingError) -> None:
        arm.drop(error)
        if self.on_failure is not None:
            self.on_failure(arm, error)

    def _guarded(self, arm: Arm, work: Callable[..., Any], *args) -> Any:
        """``work(*args)``; a TrainingError drops the arm (every rank stopped there together)."""
        try:
            return work(*args)
        except TrainingError as exc:
            if distributed.active() and not getattr(exc, "all_ranks", False):
                raise  # one rank failed alone: the others wait in the arm's collectives
            self._drop(arm, exc)
            return None

    def _step_failed(self, arm: Arm, exc: Exception, epoch: int) -> None:
        """A step of ``arm`` raised: a step after a non-finite one may fail on NaN weights, so
        the first bad step is the story. Errors that are not a run's failure end the pass."""
        if distributed.active():
            raise exc
        try:
            arm.stop_if_diverged(epoch, cause=exc)
        except TrainingError as diverged:
            return self._drop(arm, diverged)
        if not isinstance(exc, TrainingError):
            raise exc
        self._drop(arm, exc)

    # -- the loop --------------------------------------------------------------------
    def train_epoch(self, epoch: int, arms: list[Arm], progress: bool | None) -> dict[str, dict[str, float]]:
        """One epoch of ``arms``; the mean loss figures of each arm still in the pass."""
        spec, device = self.spec, self.inputs.runtime.device
        order, generator = self.generators(epoch)
        view_generators = self.view_generators(epoch)
        for arm in arms:
            arm.begin_epoch(self.fused)
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{spec.epochs}", leave=False, disable=progress if self.main else True)  # None: only on a TTY
        for batch_uint8, targets, index in self.batches.epoch(spec.batch_size, order, self.rank, self.world_size):
            live = [arm for arm in arms if arm.failure is None]
            if not live:
                break
            try:  # what the arms share: one augmentation and one teacher forward per batch
                with plugin_code(self.augmentation_component, "augmentation", epoch=epoch, step=live[0].step):
                    augmented = self.augmentation(batch_uint8, generator)
                images = Layouts(to_float(augmented, device, live[0].layout), live[0].layout)
                with self.inputs.runtime.autocast():
                    forward = teacher_forward(self.inputs.teachers, self.teacher_taps, images, batch_uint8, generator,
                                              device, self.inputs.teacher_layouts)
                views = self._draw_views(batch_uint8, view_generators, epoch, live[0].step)
            except Exception as exc:
                for arm in live:
                    self._step_failed(arm, exc, epoch)
                continue
            if self.peers:
                self._steps_with_peers(live, images, forward, views, targets, index, epoch)
            else:
                for arm in live:
                    with arm.rng_scope():
                        try:
                            with self._views_of_step(arm, views):
                                arm.train_step(images(arm.layout), teacher_view(forward, arm.teacher_taps), targets, index, epoch)
                        except Exception as exc:
                            self._step_failed(arm, exc, epoch)
            bar.update(1)
            for arm in live:
                if arm.failure is None and arm.tally.count % CHECK_EVERY == 0:
                    self._guarded(arm, arm.stop_if_diverged, epoch)
        bar.close()
        losses = {}
        for arm in arms:
            if arm.failure is None:
                self._guarded(arm, arm.stop_if_diverged, epoch)
            if arm.failure is None:
                losses[arm.name] = arm.epoch_losses()
        return losses

    def _steps_with_peers(self, live: list[Arm], images, forward, views, targets, index, epoch: int) -> None:
        """Every student's forward first, then each arm's losses (seeing the others' outputs) and step."""
        outputs: dict[str, ModelOutputs] = {}
        for arm in live:
            with arm.rng_scope():
                try:
                    outputs[arm.name] = arm.student_outputs(images(arm.layout))
                except Exception as exc:
                    self._step_failed(arm, exc, epoch)
        seen = {name: out.detached() for name, out in outputs.items()}
        for arm in live:
            if arm.failure is None:
                with arm.rng_scope():
                    try:
                        with self._views_of_step(arm, views):
                            arm.train_step(images(arm.layout), teacher_view(forward, arm.teacher_taps), targets, index, epoch,
                                           student=outputs[arm.name], peers={n: o for n, o in seen.items() if n != arm.name})
                    except Exception as exc:
                        self._step_failed(arm, exc, epoch)

    def fit(self, resume: bool | dict[str, bool] = False, progress: bool | None = None, force: bool = False,
            on_failure: OnFailure | None = None) -> dict[str, dict[str, Any] | TrainingError]:
        """Train every arm to the end: arm name -> its summary, or the error that dropped it.
        ``resume``: for every arm, or per arm name."""
        self.on_failure = on_failure
        for arm in self.arms:
            arm.begin(resume if isinstance(resume, bool) else resume.get(arm.name, False), force)
        first = min(arm.start_epoch for arm in self.arms)
        desc = self.arms[0].run_dir.name if not self.fused else f"{len(self.arms)} arms fused"
        epochs_bar = tqdm(range(first, self.spec.epochs), desc=desc, disable=progress if self.main else True, leave=False)
        for epoch in epochs_bar:
            active = [arm for arm in self.arms if arm.failure is None and arm.start_epoch <= epoch]
            if not active:
                break
            started = time.perf_counter()
            losses = self.train_epoch(epoch, active, progress)
            seconds = time.perf_counter() - started  # the pass's: every arm of it took this long
            for arm in active:
                if arm.name in losses:
                    with arm.rng_scope():  # metrics that draw, draw from the arm's stream as alone
                        record = self._guarded(arm, arm.end_epoch, epoch, losses[arm.name], seconds)
                    if record and not self.fused:
                        shown = {k: record[k] for k in (metric_key("test", "top1", arm.role), "loss") if k in record}
                        epochs_bar.set_postfix({k.split("/")[-2] if "/" in k else k: f"{v:.3f}" for k, v in shown.items()})
        outcomes: dict[str, dict[str, Any] | TrainingError] = {}
        for arm in self.arms:
            fused_with = [other.name for other in self.arms if other is not arm]
            summary = self._guarded(arm, arm.finish, fused_with) if arm.failure is None else None
            outcomes[arm.name] = summary if arm.failure is None else arm.failure
        return outcomes


class Trainer:
    """One run trained on its own (a pass of one arm), for Python callers and tests:
    ``fit`` raises the run's failure."""

    def __init__(self, spec: AnySpec, host: PluginHost, run_dir: Path, teachers: list[Teacher], log=print):
        self.inputs = pass_inputs(spec, host, teachers)
        self.arm = Arm(spec, host, run_dir, self.inputs, log=log)
        self.training = TrainingPass(self.inputs, [self.arm], log=log)
        self.spec, self.data, self.runtime, self.teachers = spec, self.inputs.data, self.inputs.runtime, teachers
        self.batches, self.steps_per_epoch = self.training.batches, self.arm.steps_per_epoch

    @property
    def network(self):
        return self.arm.network

    @property
    def step_module(self):
        return self.arm.step_module

    def train_epoch(self, epoch: int, step: int, progress: bool | None) -> tuple[int, dict[str, float]]:
        self.arm.step = step
        losses = self.training.train_epoch(epoch, [self.arm], progress)
        if self.arm.failure is not None:
            raise self.arm.failure
        return self.arm.step, losses[self.arm.name]

    def evaluate(self, final: bool, epoch: int | None = None) -> dict[str, Any]:
        return self.arm.evaluate(final, epoch)

    def fit(self, resume: bool = False, progress_disabled: bool | None = None, force: bool = False) -> dict[str, Any]:
        outcome = self.training.fit(resume, progress_disabled, force)[self.arm.name]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome
