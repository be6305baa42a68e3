"""The hooks a kdzoo plugin can implement: the whole plugin API in one place.

Every component hook follows the ``register_*(register)`` pattern (as simonw/llm and
datasette do): the plugin calls ``register(name, factory, params=..., description=...)``
once per component. The core dedupes names across plugins, checks the params model,
and names the offending plugin when something is wrong.

A ``factory`` is a callable or a ``"module:attribute"`` string; strings are imported
only when the component is built, so listing plugins never imports torch.
Factories are called as ``factory(params, **context)`` where ``params`` is an instance
of the component's params model and ``context`` depends on the kind
(see docs/hooks.md):

=============  =================================================  ====================
kind           context keywords                                   returns
=============  =================================================  ====================
model          num_classes, image_size                            kdzoo.api.Network
dataset        seed, cache_dir                                    kdzoo.api.ImageData
augmentation   (none)                                             kdzoo.api.Augmentation
loss           (none)                                             kdzoo.api.Loss
metric         (none)                                             kdzoo.api.Metric
=============  =================================================  ====================
"""

from __future__ import annotations

import pluggy

PROJECT = "kdzoo"
ENTRY_POINT_GROUP = "kdzoo"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_models(register):
    """Register model builders (teachers and students)."""


@hookspec
def register_datasets(register):
    """Register datasets (decoded uint8 image tensors with labels)."""


@hookspec
def register_augmentations(register):
    """Register augmentation policies working on uint8 image batches."""


@hookspec
def register_losses(register):
    """Register training / distillation losses."""


@hookspec
def register_metrics(register):
    """Register evaluation metrics (streaming accumulators)."""


@hookspec
def register_commands(cli):
    """Add click commands to the ``kdzoo`` CLI group ``cli``."""


# hook name -> component kind, the single table the core iterates over.
COMPONENT_HOOKS = {
    "register_models": "model",
    "register_datasets": "dataset",
    "register_augmentations": "augmentation",
    "register_losses": "loss",
    "register_metrics": "metric",
}
KINDS = tuple(COMPONENT_HOOKS.values())
