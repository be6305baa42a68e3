"""Dotted paths into nested spec dicts (``optimizer.lr``, ``losses.1.weight``): what
``--set`` and ``matrix:`` keys address."""

from __future__ import annotations

from typing import Any

from kdzoo.errors import KdzooError


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.0.c`` in nested dicts/lists, creating dicts on the way."""
    parts = dotted.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise KdzooError(f"'{dotted}': '{part}' is not an index of a list of {len(node)}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if not isinstance(node.get(part), (dict, list)):
                    node[part] = {}
                node = node[part]
        else:
            raise KdzooError(f"'{dotted}': cannot set '{part}' inside a {type(node).__name__}")
