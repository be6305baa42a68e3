"""The plugin host: hook specs, plugin loading, the component registry and building.

- :mod:`.hookspecs`: the ``register_*(register)`` hooks (the whole hook API);
- :mod:`.loading`: entry points, plugin files, allow-list, API version, clash rules;
- :mod:`.registry`: components by (kind, name), params models checked at registration;
- :mod:`.build`: one build function per kind that checks what the plugin returned.

Names load lazily: ``kdzoo`` itself imports :mod:`.hookspecs` for ``hookimpl``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "PluginHost": "kdzoo.host.loading",
    "PluginInfo": "kdzoo.host.loading",
    "get_host": "kdzoo.host.loading",
    "load_plugins": "kdzoo.host.loading",
    "reset_host": "kdzoo.host.loading",
    "Component": "kdzoo.host.registry",
    "Registry": "kdzoo.host.registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kdzoo.host' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


if TYPE_CHECKING:
    from kdzoo.host.loading import PluginHost, PluginInfo, get_host, load_plugins, reset_host
    from kdzoo.host.registry import Component, Registry
