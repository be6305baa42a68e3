"""kdzoo: a plugin-based knowledge-distillation method zoo.

Importing this package is cheap on purpose (no torch): the CLI's ``--help``,
``validate`` and ``plugins`` must answer in about a second. The Python API
(:mod:`kdzoo.python_api`: ``load_spec``, ``run_spec``, ``load_model``, ``load_summary``)
loads on first use (PEP 562); see docs/python-api.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Version of the hook API that plugins are written against. A plugin declares the
# minimum it needs (``KDZOO_PLUGIN_API = (1, 0)`` in its hook module); the loader
# refuses plugins that need a newer major/minor than this core provides.
PLUGIN_API_VERSION = (1, 4)  # 1.1: Params, metric keys, role_pairs, examples=, Metric.reduce, Reducer, all_gather_tensor; 1.2: peers, register(weights=), Network.weights_source; 1.3: Loss.views (a second view), Loss.is_task_loss, DistillBatch.stage, Loss.stages, Loss.student_head; 1.4: Network.pre_activation_stages, Network.pre_activation_norms

from kdzoo.host.hookspecs import hookimpl  # noqa: E402  (pluggy only: still cheap)

# The Python API for notebooks and scripts: public name -> module defining it.
_LAZY: dict[str, str] = {
    "load_spec": "kdzoo.python_api",
    "run_spec": "kdzoo.python_api",
    "load_model": "kdzoo.python_api",
    "load_summary": "kdzoo.python_api",
    "Spec": "kdzoo.python_api",
    "RunResult": "kdzoo.python_api",
    "KdzooError": "kdzoo.errors",
}

__all__ = sorted(["PLUGIN_API_VERSION", "__version__", "hookimpl", *_LAZY])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:  # submodules (kdzoo.run, kdzoo.spec, ...) are found by the import system
        raise AttributeError(f"module 'kdzoo' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load lazily
    from kdzoo.errors import KdzooError
    from kdzoo.python_api import RunResult, Spec, load_model, load_spec, load_summary, run_spec
