"""The hooks a kdzoo plugin can implement: the whole plugin API in one place.

Every component hook follows the ``register_*(register)`` pattern (as simonw/llm and
datasette do): the plugin calls ``register(name, factory, params=..., description=...,
examples=...)`` once per component. The core dedupes names across plugins, checks the
params model, and names the offending plugin when something is wrong. The arguments
of ``register``:

- ``name``: the component's name in specs; unique per kind across all loaded plugins
  (a second registration is refused, naming both plugins).
- ``factory``: what builds the component (below).
- ``params``: a pydantic model (subclass ``kdzoo.api.Params``) whose defaults must
  validate; a spec's ``params`` are validated against it before any work. Default:
  ``kdzoo.api.NoParams``.
- ``description``: one line shown by ``kdzoo plugins``; defaults to the first line of
  the factory's docstring (when the factory is a callable).
- ``examples``: non-default params dicts; each must validate against ``params`` when
  the plugin registers.
- ``weights``: models only: a function (or ``"module:attribute"``) ``locate(params, *,
  download) -> dict | None`` saying where the pretrained weights the params need come
  from and whether they are cached, and fetching them (``kdzoo validate``/``run`` check
  before any work, ``kdzoo fetch`` downloads; see docs/hooks.md).

A plugin is a module named in the ``kdzoo`` entry-point group of a distribution, or
a single ``.py`` file (``plugins: [file.py]`` in a spec, ``--plugins-dir DIR``) that
goes through the same validation and registration.

A ``factory`` is a callable or a ``"module:attribute"`` string; strings are imported
only when the component is built, so listing plugins never imports torch (a plugin
file's module name is not importable by name: give a file's factories as callables).
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
# Marks a plugin's hook functions (``@hookimpl def register_losses(register): ...``);
# also importable as ``kdzoo.hookimpl`` and ``kdzoo.api.hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_models(register):
    """Register model builders (teachers and students).

    Factory: ``factory(params, *, num_classes, image_size)`` returns a
    ``kdzoo.api.Network`` for ``num_classes`` classes and images of side
    ``image_size`` (the dataset's). Raise ``kdzoo.api.KdzooError`` when the params
    cannot build anything (e.g. a required weights file is missing).
    """


@hookspec
def register_datasets(register):
    """Register datasets (decoded uint8 image tensors with labels).

    Factory: ``factory(params, *, seed, cache_dir)`` returns a ``kdzoo.api.ImageData``.
    ``seed`` seeds generated data and deterministic subsets (the core passes 0: a
    dataset depends on its spec entry only, not on the run's seed, so every run of a
    study sees the same images); ``cache_dir`` (a ``pathlib.Path``, ``$KDZOO_CACHE``)
    is where to cache decoded data. Raise ``kdzoo.api.KdzooError`` when files are
    missing.
    """


@hookspec
def register_augmentations(register):
    """Register augmentation policies working on uint8 image batches.

    Factory: ``factory(params)`` returns a ``kdzoo.api.Augmentation``: a callable
    ``(images, generator) -> images`` on uint8 ``(B, 3, H, W)`` batches that draws all
    its randomness from ``generator``.
    """


@hookspec
def register_losses(register):
    """Register training / distillation losses.

    Factory: ``factory(params)`` returns a ``kdzoo.api.Loss`` (often the ``Loss``
    subclass itself, called with its params).
    """


@hookspec
def register_metrics(register):
    """Register evaluation metrics (streaming accumulators).

    Factory: ``factory(params)`` returns a ``kdzoo.api.Metric`` (often the ``Metric``
    subclass itself).
    """


@hookspec
def register_commands(cli):
    """Add click commands to the ``kdzoo`` CLI group ``cli`` (a ``click.Group``).

    Called for installed plugins when the CLI starts (not for plugin files); use
    ``@cli.command()`` or ``cli.add_command(...)``.
    """


# hook name -> component kind, the single table the core iterates over.
COMPONENT_HOOKS = {
    "register_models": "model",
    "register_datasets": "dataset",
    "register_augmentations": "augmentation",
    "register_losses": "loss",
    "register_metrics": "metric",
}
KINDS = tuple(COMPONENT_HOOKS.values())
