"""One training step's forward: the teachers (frozen, inference mode), then the student and
the loss terms in one module.

The student and the losses live in one ``StepModule`` so that, under several processes,
one DDP wrapper all-reduces the gradients of the student *and* of every trainable part
of the losses (connectors, CTKD's temperature) with a single reducer. DDP runs with
``find_unused_parameters=True`` (a loss may leave a parameter out of a step) and without
syncing buffers on every forward: CRD's memory banks are buffers and would be sent
every step; ranks keep them equal by gathering every rank's update instead, and the
BatchNorm statistics (student, connectors) are broadcast from rank 0 before each
evaluation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import Tensor, nn

from kdzoo.api import DistillBatch, Loss, ModelOutputs, ViewOutputs, ViewRequest
from kdzoo.errors import ComponentError, TrainingError
from kdzoo.host.build import plugin_code
from kdzoo.run.data import Layouts, to_float
from kdzoo.run.evaluator import forward_with_taps


def loss_term(component, loss: Loss, batch: DistillBatch) -> Tensor:
    """One loss's value for the batch, checked to be a scalar tensor."""
    with plugin_code(component, "forward", epoch=batch.epoch, step=batch.step):
        value = loss(batch)
    if not isinstance(value, Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ComponentError(
            f"loss '{component.name}' (plugin '{component.plugin}') returned {shape} from forward at epoch "
            f"{batch.epoch + 1}, step {batch.step + 1}; a loss must return a scalar tensor"
        )
    return value.float().reshape(())


CHECK_EVERY = 50  # steps between two reads of the non-finite flag (and at the end of every epoch)


class LossTally:
    """An epoch's loss sums and its first non-finite step, kept on the device.

    ``add`` queues a few tiny kernels and never waits for the device: the sums are float64
    (the float32 values, added in order, as Python floats were before, so figures are bit
    for bit the same on the CPU) and are read once per epoch (``means``). The first step
    whose total is not finite keeps its step number and term values on the device;
    ``first_bad`` reads them (one host sync), every ``CHECK_EVERY`` steps and at the
    epoch's end. Checking late loses nothing: the last good state on disk is the previous
    epoch's either way, and the message names the first bad step.
    """

    def __init__(self, keys: list[str], device: torch.device):
        self.keys = list(dict.fromkeys(keys))  # "loss", then each term's figure; two terms of one name share one
        self.slots = [self.keys.index(k) for k in keys]
        self.sums = torch.zeros(len(self.keys), dtype=torch.float64, device=device)
        self.count = 0
        self.bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.bad_values = torch.zeros(len(keys), dtype=torch.float32, device=device)  # total, then each term

    def add(self, step: int, total: Tensor, terms: list[Tensor]) -> None:
        values = torch.stack([total.detach().float(), *(t.detach().float() for t in terms)])
        if len(self.keys) == len(self.slots):
            self.sums += values.double()
        else:  # a shared figure adds its terms one after the other, as the Python floats did
            for slot, value in zip(self.slots, values.double().unbind()):
                self.sums[slot].add_(value)
        self.count += 1
        first = self.bad_step.lt(0) & values[0].isfinite().logical_not()
        self.bad_step = torch.where(first, step, self.bad_step)
        self.bad_values = torch.where(first, values, self.bad_values)

    def first_bad(self) -> tuple[int, list[float]] | None:
        """(step, [total, *terms]) of the first non-finite step so far, or None (reads the device)."""
        step = int(self.bad_step)
        return None if step < 0 else (step, self.bad_values.tolist())

    def means(self) -> dict[str, float]:
        """Each figure averaged over the epoch's steps (reads the device once)."""
        return {k: v / max(1, self.count) for k, v in zip(self.keys, self.sums.tolist())}


def divergence_error(terms_spec, state_path, epoch: int, bad: tuple[int, list[float]] | None) -> TrainingError:
    """The error of a loss that is not finite, from ``LossTally.first_bad``.

    With several processes every rank calls it at the same check (a gather), also a rank
    whose loss stayed finite (``bad`` None): the rank with the earliest bad step, the
    lowest of them on a tie, tells its story, and every rank raises, so a grid may go on
    to its next arm."""
    from kdzoo.run import distributed

    report = None
    if bad is not None:
        step, (value, *terms) = bad
        report = (step, value, ", ".join(f"{term.name}={t:.4g}" for term, t in zip(terms_spec, terms)))
    where = ""
    if distributed.world_size() > 1:
        from kdzoo.api import Reducer

        reports = Reducer().gather(report)
        first = min((r for r, rep in enumerate(reports) if rep is not None), key=lambda r: (reports[r][0], r))
        report, where = reports[first], f" on rank {first}"
    step, value, detail = report
    kept = f"the last good state (after epoch {epoch}) is in {state_path}" if epoch else "no epoch had finished"
    error = TrainingError(
        f"the loss became {value}{where} at epoch {epoch + 1}, step {step + 1} ({detail}); "
        f"stopped; {kept}. Lower the learning rate or check the loss weights"
    )
    error.all_ranks = True  # read by the grid runner: every rank stopped here together
    return error


TeacherForward = list[tuple[Tensor, dict[str, Tensor]]]  # per teacher: logits and tapped features, inference tensors


def teacher_forward(teachers, taps: list[list[str]], images: Layouts, batch_uint8: Tensor, generator: torch.Generator,
                    device: torch.device, channels_last: dict[str, bool]) -> TeacherForward:
    """Every teacher's forward on the batch, once for every arm of a pass (its own augmented
    view with teacher_views: own), with the taps any arm asked for."""
    outputs = []
    for teacher, paths in zip(teachers, taps):
        if teacher.augmentation is not None:  # teacher_views: own
            x = to_float(teacher.augmentation(batch_uint8, generator), device, channels_last[teacher.role])
        else:
            x = images(channels_last[teacher.role])
        with torch.inference_mode():
            outputs.append(forward_with_taps(teacher.network, x, paths))
    return outputs


def teacher_forward_on_view(teachers, taps: list[list[str]], images: Layouts, channels_last: dict[str, bool]) -> TeacherForward:
    """Every teacher's forward on a further view of the batch (``Loss.views``): the view's
    images themselves, also for a teacher with a view of its own (teacher_views: own)."""
    outputs = []
    for teacher, paths in zip(teachers, taps):
        with torch.inference_mode():
            outputs.append(forward_with_taps(teacher.network, images(channels_last[teacher.role]), paths))
    return outputs


def teacher_view(forward: TeacherForward, taps: list[list[str]]) -> list[ModelOutputs]:
    """One arm's teacher outputs: its own taps, cloned out of inference mode (inference
    tensors cannot be saved for backward), so no arm's loss can change another's inputs."""
    return [ModelOutputs(logits.clone(), {k: feats[k].clone() for k in paths}) for (logits, feats), paths in zip(forward, taps)]


def view_key(request: ViewRequest) -> str:
    """What identifies a view in a pass: its policy and params as written (one view, one
    generator and one forward per model for every loss that asks for it)."""
    return json.dumps([request.augmentation, request.params], sort_keys=True)


def loss_views(component, loss: Loss) -> dict[str, ViewRequest]:
    """The further views ``loss`` asks for (``Loss.views``), checked."""
    with plugin_code(component, "views"):
        views = loss.views()
    if not isinstance(views, dict) or not all(isinstance(k, str) and isinstance(v, ViewRequest) for k, v in views.items()):
        raise ComponentError(
            f"loss '{component.name}' (plugin '{component.plugin}') returned {views!r} from views(); "
            "a loss must return a dict of view name -> kdzoo.api.ViewRequest"
        )
    return views


StepViews = dict[str, tuple[Tensor, list[ModelOutputs]]]  # view key -> its images (the arm's layout) and the arm's teacher outputs


class StepModule(nn.Module):
    """The student (with its taps) and the losses: ``forward`` returns the loss terms.

    Further views (``Loss.views``): the pass draws each view and runs the teachers on it,
    and hands them in around the arm's step (``views_of_step``); ``forward`` runs the
    student on each (inside the DDP forward, so one reducer sees both forwards) and gives
    each loss the views it asked for."""

    def __init__(self, network: nn.Module, losses: nn.ModuleList, components: list, student_taps: list[str]):
        super().__init__()
        self.network = network  # the same modules the trainer saves: no copy
        self.losses = losses
        self.components = components
        self.student_taps = student_taps
        self.loss_views = [loss_views(component, loss) for component, loss in zip(components, losses)]
        self.view_requests = {view_key(r): r for views in self.loss_views for r in views.values()}
        self.step_views: StepViews = {}

    def student_outputs(self, images: Tensor) -> ModelOutputs:
        return ModelOutputs(*forward_with_taps(self.network, images, self.student_taps))

    @contextmanager
    def views_of_step(self, views: StepViews) -> Iterator[None]:
        """The further views of the next step (every key of ``view_requests``)."""
        self.step_views = views
        try:
            yield
        finally:
            self.step_views = {}

    def forward(self, images: Tensor, teachers: list[ModelOutputs], targets: Tensor, indices: Tensor,
                epoch: int, epochs: int, step: int, steps: int, student: ModelOutputs | None = None,
                peers: dict[str, ModelOutputs] | None = None, stage: str | None = None,
                active: list[bool] | None = None) -> list[Tensor | None]:
        """The loss terms; ``student``: outputs already computed (a pass with peers). A stage
        (``stage``, its name) computes only the ``active`` terms: the others are None."""
        batch = DistillBatch(
            student=student or self.student_outputs(images), teachers=teachers, targets=targets, images=images,
            indices=indices, epoch=epoch, epochs=epochs, step=step, steps=steps, peers=peers or {}, stage=stage,
        )
        active = active or [True] * len(self.losses)
        missing = set(self.view_requests) - set(self.step_views)
        if missing:
            raise TrainingError(f"the step has no view {sorted(missing)} that the losses asked for: a step with views runs in a TrainingPass")
        wanted = {view_key(r) for views, on in zip(self.loss_views, active) if on for r in views.values()}
        views = {}
        for key in self.view_requests:  # in the losses' order: the student's forwards draw dropout in a fixed order
            if key in wanted:
                view_images, view_teachers = self.step_views[key]
                views[key] = ViewOutputs(view_images, self.student_outputs(view_images), view_teachers)
        return [
            None if not on else
            loss_term(component, loss, replace(batch, views={name: views[view_key(r)] for name, r in asked.items()}) if asked else batch)
            for component, loss, asked, on in zip(self.components, self.losses, self.loss_views, active)
        ]


def wrap_ddp(step_module: StepModule, device: torch.device) -> nn.Module:
    """``step_module`` under DistributedDataParallel (parameters broadcast from rank 0 now)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # A parameter no forward uses: with find_unused_parameters=True, DDP warns (from C++,
    # once per process) on a step where every parameter was used, the usual case. Not in
    # the optimizer, not saved: it costs one float in an all-reduce bucket.
    step_module.unused_by_design = nn.Parameter(torch.zeros(1, device=device))
    # Buffers are not synced on every forward (memory banks); torch >= 2.13 names the flag anew.
    no_forward_sync = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    return DistributedDataParallel(
        step_module,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,
        **({"forward_sync_buffers": False} if no_forward_sync else {"broadcast_buffers": False}),
    )
