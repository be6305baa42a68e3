"""kdzoo: a plugin-based knowledge-distillation method zoo.

Importing this package is cheap on purpose (no torch): the CLI's ``--help``,
``validate`` and ``plugins`` must answer in about a second.
"""

__version__ = "0.1.0"

# Version of the hook API that plugins are written against. A plugin declares the
# minimum it needs (``KDZOO_PLUGIN_API = (1, 0)`` in its hook module); the loader
# refuses plugins that need a newer major/minor than this core provides.
PLUGIN_API_VERSION = (1, 2)  # 1.1: Params, metric keys, role_pairs, examples=, Metric.reduce, Reducer, all_gather_tensor; 1.2: peers

from kdzoo.host.hookspecs import hookimpl  # noqa: E402  (pluggy only: still cheap)

__all__ = ["PLUGIN_API_VERSION", "__version__", "hookimpl"]
