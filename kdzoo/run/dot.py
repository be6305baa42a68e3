"""DOT, the Distillation-Oriented Trainer: SGD with one momentum for the task-loss gradient
and another, larger, for the distillation-loss gradient.

Zhao, Cui, Song, Liang, 2023, "DOT: A Distillation-Oriented Trainer" (ICCV 2023,
arXiv 2307.08436). The update follows the authors' ``DistillationOrientedTrainer``
(megvii-research/mdistiller ``mdistiller/engine/dot.py``, driven by the ``DOT`` trainer of
``mdistiller/engine/trainer.py``): with ``beta`` the spec's momentum and ``delta`` DOT's,
the task gradient gets momentum ``beta - delta`` and the distillation gradient
``beta + delta``. Per parameter ``p``, with task gradient ``g_t`` and distillation
gradient ``g_d`` (either may be absent), weight decay ``wd`` and learning rate ``lr``:

1. with ``g_t``: ``d = g_t + wd * p``; the task buffer starts as ``d`` and is then
   ``m * buf + d``, where ``m`` is ``beta - delta`` if ``p`` also has ``g_d`` and ``beta``
   otherwise; ``p -= lr * buf``.
2. then, with ``g_d``: the distillation buffer starts as ``g_d`` and is then
   ``(beta + delta) * buf + g_d`` if ``p`` also has ``g_t`` (its weight decay went with the
   task gradient), otherwise ``beta * buf + g_d + wd * p``; ``p -= lr * buf``.

No dampening, no Nesterov. As in the reference, the first step of a parameter that has only
a distillation gradient (a connector) starts its buffer without weight decay. With
``delta = 0`` and every parameter in both losses' graphs, the two buffers sum to SGD's
momentum buffer on the summed loss, so DOT is then plain SGD with momentum.

Use: ``distill_loss.backward(retain_graph=True)``, :meth:`stash_distill_grads`, then
``task_loss.backward()`` and :meth:`step`. The buffers are tensors of the optimizer's
state (``task_momentum_buffer``, ``distill_momentum_buffer``): they checkpoint and resume
with ``state_dict`` like SGD's.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from kdzoo.errors import KdzooError
from kdzoo.run import distributed

TASK_BUFFER = "task_momentum_buffer"
DISTILL_BUFFER = "distill_momentum_buffer"


class DistillationOrientedTrainer(torch.optim.Optimizer):
    """SGD with separate momenta for the task and the distillation gradients (see the module)."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, momentum: float, delta: float, weight_decay: float = 0.0):
        if not 0.0 <= momentum - delta <= momentum + delta < 1.0:
            raise ValueError(f"DOT: momentum {momentum} +- delta {delta} must lie in [0, 1)")
        defaults = dict(lr=lr, task_momentum=momentum - delta, distill_momentum=momentum + delta, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self._distill_grads: dict[nn.Parameter, Tensor] = {}  # between stash_distill_grads and step only

    def stash_distill_grads(self) -> None:
        """Take the gradients now in ``.grad`` as the distillation gradients (and clear ``.grad``)."""
        self._distill_grads = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._distill_grads[p] = p.grad
                    p.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        """Apply the task gradients (``.grad``) and the stashed distillation gradients."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        distill_grads, self._distill_grads = self._distill_grads, {}
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            m_task, m_distill = group["task_momentum"], group["distill_momentum"]
            m_mean = (m_task + m_distill) / 2  # the spec's momentum, for a gradient that comes alone
            for p in group["params"]:
                task_grad, distill_grad = p.grad, distill_grads.get(p)
                if task_grad is None and distill_grad is None:
                    continue
                state = self.state[p]
                if task_grad is not None:
                    d_p = task_grad.add(p, alpha=wd) if wd else task_grad
                    buf = state.get(TASK_BUFFER)
                    if buf is None:
                        state[TASK_BUFFER] = buf = d_p.detach().clone()
                    else:
                        buf.mul_(m_task if distill_grad is not None else m_mean).add_(d_p)
                    p.add_(buf, alpha=-lr)
                if distill_grad is not None:
                    buf = state.get(DISTILL_BUFFER)
                    if buf is None:
                        state[DISTILL_BUFFER] = buf = distill_grad.detach().clone()
                    elif task_grad is not None:
                        buf.mul_(m_distill).add_(distill_grad)
                    else:  # p was not moved by a task step: its weight decay goes here
                        buf.mul_(m_mean).add_(distill_grad.add(p, alpha=wd) if wd else distill_grad)
                    p.add_(buf, alpha=-lr)
        return loss


def dot_task_terms(terms: list, losses: Iterable[nn.Module]) -> list[bool]:
    """Per term of the spec (``terms``, built as ``losses``): whether it is a task term
    (``Loss.is_task_loss``). The spec's validation refuses a DOT run without both kinds; the
    built losses are checked again (a factory that is not the class it builds)."""
    flags = [loss.is_task_loss for loss in losses]
    if all(flags) or not any(flags):
        missing = "distillation term" if all(flags) else "task term (a loss with is_task_loss, such as ce)"
        raise KdzooError(f"optimizer dot needs a task term and a distillation term; losses {', '.join(t.name for t in terms)} have no {missing}")
    if distributed.active():  # DDP all-reduces the gradients of one backward per forward; DOT runs two
        raise KdzooError("optimizer dot trains in one process: under DDP only one of its two gradients would be all-reduced")
    return flags
