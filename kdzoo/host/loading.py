"""Plugin loading: entry points of the ``kdzoo`` group and plugin files, into a Registry.

Built-in plugins (``plugins/`` in the repo) are found exactly like third-party ones,
through the same entry-point group; they load first, so a newcomer that registers a
name a built-in already has is the one refused (with both plugins named), whatever the
plugins' names sort to. A plugin that fails to import or register is reported by name
and the others still load. ``KDZOO_LOAD_PLUGINS`` (comma-separated plugin names)
limits what loads. Plugin *files* (``plugins: [my_losses.py]`` in a spec,
``--plugins-dir``) go through exactly the same registration.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
import os
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from kdzoo import PLUGIN_API_VERSION
from kdzoo.errors import KdzooError, PluginError, did_you_mean
from kdzoo.host import hookspecs
from kdzoo.host.registry import Registry, make_register
from kdzoo.run.checkpoint import file_sha256

ALLOW_LIST_ENV = "KDZOO_LOAD_PLUGINS"
# Entry-point names of the plugins that ship with kdzoo (plugins/ in the repo). Only
# their names are known here: the core never imports them.
BUILTIN_PLUGINS = ("kdzoo-models", "kdzoo-data", "kdzoo-losses", "kdzoo-feature-losses", "kdzoo-metrics")


@dataclass
class PluginInfo:
    name: str  # entry-point name (or file name); the name users see and allow-list
    module: str
    distribution: str | None = None
    version: str | None = None
    api: tuple[int, int] = (1, 0)
    builtin: bool = False
    file: str | None = None  # a plugin file: its absolute path
    sha256: str | None = None  # ... and the hash of its content, for the run manifest


@dataclass
class PluginHost:
    manager: pluggy.PluginManager
    registry: Registry
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def component_versions(self) -> dict[str, str | None]:
        return {name: info.version for name, info in self.plugins.items() if info.file is None}

    def plugin_files(self) -> list[dict[str, str]]:
        """Path and sha256 of every plugin file loaded (recorded in run manifests)."""
        return [{"path": info.file, "sha256": info.sha256} for info in self.plugins.values() if info.file]


def _allow_list() -> set[str] | None:
    raw = os.environ.get(ALLOW_LIST_ENV)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def required_api(module: types.ModuleType) -> tuple[int, int]:
    """The plugin API version a plugin module declares it needs (default 1.0)."""
    required = getattr(module, "KDZOO_PLUGIN_API", (1, 0))
    return tuple(int(x) for x in required)[:2]  # type: ignore[return-value]


def new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    return manager


def call_hook_each(manager: pluggy.PluginManager, hook_name: str, plugin: object | None = None, **kwargs: Any) -> Iterator[tuple[str, BaseException]]:
    """Call each implementation of ``hook_name`` (as pluggy registered it: the @hookimpl
    marker and ``specname`` count), optionally only ``plugin``'s, one at a time so that
    one failing plugin does not hide the others; yields (plugin name, exception) per failure.

    The one way kdzoo calls hooks: component registration, commands and ``plugins check``.
    """
    for impl in getattr(manager.hook, hook_name).get_hookimpls():
        if plugin is not None and impl.plugin is not plugin:
            continue
        try:
            impl.function(**{name: kwargs[name] for name in impl.argnames})
        except Exception as exc:  # noqa: BLE001 - reported per plugin
            yield manager.get_name(impl.plugin) or impl.plugin_name, exc


def register_plugin(host: PluginHost, module: types.ModuleType, info: PluginInfo) -> None:
    """Add one plugin module to ``host``: API check, hook validation, component registration.

    All-or-nothing: on error the plugin's components are removed again and the error
    (naming the plugin) is raised.
    """
    info.api = required_api(module)
    if info.api > PLUGIN_API_VERSION:
        raise PluginError(
            f"plugin '{info.name}' needs kdzoo plugin API {info.api[0]}.{info.api[1]}, "
            f"this kdzoo provides {PLUGIN_API_VERSION[0]}.{PLUGIN_API_VERSION[1]}: upgrade kdzoo"
        )
    try:
        host.manager.register(module, name=info.name)
        host.manager.check_pending()
    except (ValueError, pluggy.PluginValidationError) as exc:
        if host.manager.is_registered(module):
            host.manager.unregister(module)
        raise PluginError(f"plugin '{info.name}': {exc}") from exc
    before = set(host.registry.components)
    attempted: list[tuple[str, str]] = []
    try:
        for hook_name, kind in hookspecs.COMPONENT_HOOKS.items():
            register = make_register(host.registry, kind, info.name, attempted=attempted)
            for _plugin, exc in call_hook_each(host.manager, hook_name, plugin=module, register=register):
                raise exc
    except Exception as exc:
        for key in set(host.registry.components) - before:
            del host.registry.components[key]
        host.manager.unregister(module)
        for key in attempted:
            host.registry.failed_components.setdefault(key, info.name)
        if isinstance(exc, PluginError):
            raise
        raise PluginError(f"plugin '{info.name}' failed while registering: {exc!r}") from exc
    host.plugins[info.name] = info


def plugin_entry_points() -> list[md.EntryPoint]:
    """The entry points of the ``kdzoo`` group, one per plugin name: built-ins first (in
    their fixed order), then the others sorted by name."""
    unique: dict[str, md.EntryPoint] = {}
    for ep in md.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
        unique.setdefault(ep.name, ep)  # the same distribution seen twice on sys.path
    order = {name: i for i, name in enumerate(BUILTIN_PLUGINS)}
    return sorted(unique.values(), key=lambda ep: (order.get(ep.name, len(order)), ep.name))


def _is_builtin(ep: md.EntryPoint) -> bool:
    dist = ep.dist
    return ep.name in BUILTIN_PLUGINS and (dist is None or dist.metadata["Name"] == ep.name)


def _record_failure(host: PluginHost, name: str, exc: BaseException) -> None:
    if isinstance(exc, PluginError):
        host.registry.failures[name] = str(exc)
    else:
        host.registry.failures[name] = f"plugin '{name}' failed to import: {type(exc).__name__}: {exc}"


def import_plugin_file(path: Path) -> types.ModuleType:
    """Import one ``.py`` file as a module (its own unique name: two files may share a stem)."""
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    module_name = f"kdzoo_plugin_file_{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin file {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def load_plugin_file(host: PluginHost, path: Path) -> None:
    """Load a plugin file into ``host``; a failure is recorded like a package's."""
    path = Path(path).resolve()
    name = path.name
    if not path.is_file():
        raise KdzooError(f"plugin file not found: {path}")
    info = PluginInfo(name=name, module=str(path), file=str(path), sha256=file_sha256(path))
    if name in host.plugins:
        if host.plugins[name].file == str(path):
            return
        raise PluginError(f"plugin file {path}: another plugin is already named '{name}' ({host.plugins[name].module})")
    try:
        register_plugin(host, import_plugin_file(path), info)
    except Exception as exc:  # noqa: BLE001 - a broken file must not take the others down
        _record_failure(host, name, exc)


def load_plugins(extra_modules: list[types.ModuleType] | None = None, plugin_files: list[Path] | None = None) -> PluginHost:
    """Load every entry point of the ``kdzoo`` group (subject to the allow-list), then
    ``extra_modules`` and ``plugin_files``."""
    host = PluginHost(new_manager(), Registry())
    allow = _allow_list()
    entry_points = plugin_entry_points()
    if allow is not None:
        known = [ep.name for ep in entry_points]
        for name in sorted(allow - set(known)):
            host.warnings.append(f"{ALLOW_LIST_ENV} names '{name}', which is not installed{did_you_mean(name, known)}; installed: {', '.join(known) or 'none'}")
    for ep in entry_points:
        if allow is not None and ep.name not in allow:
            continue
        dist = ep.dist
        info = PluginInfo(
            name=ep.name,
            module=ep.value,
            distribution=dist.metadata["Name"] if dist else None,
            version=dist.version if dist else None,
            builtin=_is_builtin(ep),
        )
        try:
            register_plugin(host, ep.load(), info)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the others down
            _record_failure(host, ep.name, exc)
    for module in extra_modules or []:
        register_plugin(host, module, PluginInfo(name=module.__name__, module=module.__name__))
    for path in plugin_files or []:
        load_plugin_file(host, path)
    return host


_HOSTS: dict[tuple[str, ...], PluginHost] = {}


def get_host(plugin_files: list[Path] | None = None) -> PluginHost:
    """The process-wide plugin host (per set of plugin files), loaded on first use."""
    key = tuple(dict.fromkeys(str(Path(p).resolve()) for p in plugin_files or []))  # in the order given
    if key not in _HOSTS:
        _HOSTS[key] = load_plugins(plugin_files=[Path(p) for p in key])
    return _HOSTS[key]


def get_host_with_files(plugin_files: list[Path]) -> PluginHost:
    """``get_host`` for files a spec or ``--plugins-dir`` asked for by name: one that cannot
    load is an error (the run would miss what it asked for), not a warning."""
    host = get_host(plugin_files)
    named = {Path(p).resolve().name for p in plugin_files}
    failed = [reason for plugin, reason in host.registry.failures.items() if plugin in named]
    if failed:
        raise KdzooError("plugin file refused: " + "; ".join(failed))
    return host


def reset_host() -> None:
    _HOSTS.clear()
