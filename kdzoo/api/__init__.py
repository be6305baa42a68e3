"""The public plugin API: everything a kdzoo plugin may import, in one namespace.

Versioned by :data:`kdzoo.PLUGIN_API_VERSION`: a name listed in ``__all__`` keeps its
meaning within a major version. Names load lazily (PEP 562), so a hook module can
``from kdzoo.api import Params`` without importing torch; the torch-based types load
when a factory first touches them. The reference is docs/api.md (generated).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kdzoo import PLUGIN_API_VERSION, hookimpl

# public name -> submodule of kdzoo.api (or a core module) that defines it
_EXPORTS: dict[str, str] = {
    # models
    "Network": "kdzoo.api.models",
    "CamHead": "kdzoo.api.models",
    "IMAGENET_MEAN": "kdzoo.api.models",
    "IMAGENET_STD": "kdzoo.api.models",
    "CIFAR_MEAN": "kdzoo.api.models",
    "CIFAR_STD": "kdzoo.api.models",
    # data
    "ImageData": "kdzoo.api.data",
    "Augmentation": "kdzoo.api.data",
    # losses
    "Loss": "kdzoo.api.losses",
    "ModelOutputs": "kdzoo.api.losses",
    "DistillBatch": "kdzoo.api.losses",
    "SetupContext": "kdzoo.api.losses",
    "TapShapes": "kdzoo.api.losses",
    "ViewRequest": "kdzoo.api.losses",
    "ViewOutputs": "kdzoo.api.losses",
    "StudentHead": "kdzoo.api.losses",
    # metrics
    "Metric": "kdzoo.api.metrics",
    "EvalBatch": "kdzoo.api.metrics",
    "ensemble_logits": "kdzoo.api.metrics",
    "role_logits": "kdzoo.api.metrics",
    "role_pairs": "kdzoo.api.metrics",
    "student_role": "kdzoo.api.metrics",
    # several processes (DDP): identity in a single process
    "Reducer": "kdzoo.api.distributed",
    "all_gather_tensor": "kdzoo.api.distributed",
    "rank": "kdzoo.api.distributed",
    "world_size": "kdzoo.api.distributed",
    # metric keys
    "ENSEMBLE": "kdzoo.api.keys",
    "role_key": "kdzoo.api.keys",
    "pair_key": "kdzoo.api.keys",
    # params
    "Params": "kdzoo.api.params",
    "NoParams": "kdzoo.api.params",
    # taps and connectors
    "tapped": "kdzoo.api.taps",
    "make_connector": "kdzoo.api.connectors",
    "count_parameters": "kdzoo.api.connectors",
    "as_feature_map": "kdzoo.api.connectors",
    "as_embedding": "kdzoo.api.connectors",
    "feature_map_shape": "kdzoo.api.connectors",
    "embedding_shape": "kdzoo.api.connectors",
    # errors a plugin raises for bad user input (printed without a traceback)
    "KdzooError": "kdzoo.errors",
    "did_you_mean": "kdzoo.errors",
    # checkpoint files (model plugins that load kdzoo checkpoints as weights)
    "MODEL_FILE": "kdzoo.rundir",  # a run directory's checkpoint tensors: Network.body under BODY_PREFIX, loss state under LOSSES_PREFIX
    "BODY_PREFIX": "kdzoo.rundir",
    "LOSSES_PREFIX": "kdzoo.rundir",
    "HEAD_PREFIX": "kdzoo.rundir",
}

__all__ = sorted([*_EXPORTS, "PLUGIN_API_VERSION", "hookimpl"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kdzoo.api' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load lazily
    from kdzoo.api.connectors import as_embedding, as_feature_map, count_parameters, embedding_shape, feature_map_shape, make_connector
    from kdzoo.api.data import Augmentation, ImageData
    from kdzoo.api.distributed import Reducer, all_gather_tensor, rank, world_size
    from kdzoo.api.keys import ENSEMBLE, pair_key, role_key
    from kdzoo.api.losses import DistillBatch, Loss, ModelOutputs, SetupContext, StudentHead, TapShapes, ViewOutputs, ViewRequest
    from kdzoo.api.metrics import EvalBatch, Metric, ensemble_logits, role_logits, role_pairs, student_role
    from kdzoo.api.models import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, CamHead, Network
    from kdzoo.api.params import NoParams, Params
    from kdzoo.api.taps import tapped
    from kdzoo.errors import KdzooError, did_you_mean
    from kdzoo.rundir import BODY_PREFIX, HEAD_PREFIX, LOSSES_PREFIX, MODEL_FILE
