"""Optimizers, learning-rate schedules and per-epoch seeds."""

from __future__ import annotations

import math

import torch
from torch import nn

from kdzoo.run.dot import DistillationOrientedTrainer
from kdzoo.spec import AnySpec

def lr_factor(spec: AnySpec, step: int, steps: int, steps_per_epoch: int) -> float:
    schedule = spec.schedule
    warmup = schedule.warmup_epochs * steps_per_epoch
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    if schedule.name == "cosine":
        low = schedule.min_lr_ratio
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule.name == "multistep":
        return schedule.gamma ** sum(progress >= m for m in schedule.milestones)
    if schedule.name == "onecycle":  # linear up for 30% of the run, cosine down after
        peak = 0.3
        return (0.1 + 0.9 * progress / peak) if progress < peak else 0.5 * (1 + math.cos(math.pi * (progress - peak) / (1 - peak)))
    return 1.0


def make_optimizer(spec: AnySpec, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    opt = spec.optimizer
    if opt.name == "dot":
        return DistillationOrientedTrainer(parameters, lr=opt.lr, momentum=opt.momentum, delta=opt.delta, weight_decay=opt.weight_decay)
    if opt.name == "sgd":
        return torch.optim.SGD(parameters, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov and opt.momentum > 0, weight_decay=opt.weight_decay)
    return torch.optim.AdamW(parameters, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay)


def epoch_seed(seed: int, epoch: int) -> int:
    """Data order, augmentation and dropout of an epoch depend on (seed, epoch) only:
    a resumed run replays exactly what an uninterrupted run would have done."""
    return seed * 100_003 + epoch
