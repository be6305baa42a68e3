"""Plugin files a spec asks for (``plugins: [my_losses.py]``, relative to the spec file)
and ``--plugins-dir`` folders: a prototype method used without packaging it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdzoo.errors import SpecError


def resolve_plugin_paths(data: dict[str, Any], base: Path, source: str) -> list[Path]:
    """The spec's ``plugins`` entries as absolute paths (resolved against ``base``), checked
    to exist; ``data['plugins']`` is rewritten to them so the resolved spec can be resumed
    from anywhere."""
    entries = data.get("plugins") or []
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise SpecError(source, [f"plugins: a list of plugin file paths (.py) (got {entries!r})"])
    paths, problems = [], []
    for index, entry in enumerate(entries):
        path = (base / entry).resolve() if not Path(entry).is_absolute() else Path(entry)
        if path.suffix != ".py":
            problems.append(f"plugins.{index}: '{entry}' is not a .py file")
        elif not path.is_file():
            problems.append(f"plugins.{index}: plugin file not found: {path}")
        paths.append(path)
    if problems:
        raise SpecError(source, problems)
    data["plugins"] = [str(p) for p in paths]
    return paths


def files_in_dirs(dirs: tuple[Path, ...] | list[Path]) -> list[Path]:
    """Every ``*.py`` file (not starting with ``_``) of each ``--plugins-dir``, sorted."""
    return [p.resolve() for d in dirs for p in sorted(Path(d).glob("*.py")) if not p.name.startswith("_")]


def plugin_files_of(spec_path: Path, dirs: tuple[Path, ...] | list[Path] = (), overrides: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """The plugin files a ``kdzoo run SPEC`` needs: the spec's own (``--set plugins=...``
    included), then the folders'."""
    from kdzoo.spec.loading import apply_overrides, read_spec_file

    data = apply_overrides(read_spec_file(spec_path), list(overrides))
    return [*resolve_plugin_paths(data, Path(spec_path).resolve().parent, str(spec_path)), *files_in_dirs(dirs)]
