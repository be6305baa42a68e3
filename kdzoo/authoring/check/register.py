"""Registration checks: the plugin's component hooks called as kdzoo calls them
(:func:`kdzoo.host.loading.call_hook_each` with :func:`kdzoo.host.registry.make_register`),
one result per component, names that clash with any other installed plugin, and what a
component needs beyond registering (a description, a strict, JSON-able params model)."""

from __future__ import annotations

import inspect
import json
import types
from collections.abc import Callable
from typing import Any

import pluggy
from pydantic import BaseModel, ValidationError

from kdzoo.authoring.check.report import FAIL, PASS, Checks
from kdzoo.errors import PluginError
from kdzoo.host import hookspecs
from kdzoo.host.loading import BUILTIN_PLUGINS, PluginHost, PluginInfo, call_hook_each, new_manager, plugin_entry_points, register_plugin
from kdzoo.host.registry import Component, Registry, make_register


def _default_bound_violations(params: Any) -> list[str]:
    """The defaults of ``params`` that break their own field's bounds (``Field(2, ge=4)``)."""
    if not (inspect.isclass(params) and issubclass(params, BaseModel)):
        return []
    try:  # a model with validate_default=True refuses the bad default at once, others once re-validated
        params.model_validate(params.model_validate({}).model_dump())
    except ValidationError as exc:
        return [
            f"the default {'.'.join(map(str, e['loc']))}={e.get('input')!r} breaks its own bound ({e['msg']})"
            for e in exc.errors()
            if e["type"] != "missing"  # no default at all: the registry's message says so
        ]
    except Exception:  # noqa: BLE001 - a validator that crashes: the registry's message says so
        return []
    return []


def _explain(exc: PluginError, params: Any) -> str:
    """A registration error, with a wrapped pydantic error spelt out field by field and the
    defaults that break their own bounds named with their values."""
    cause = exc.__cause__
    message = str(exc)
    if isinstance(cause, ValidationError) and str(cause) in message:
        fields = "; ".join(f"{'.'.join([cause.title, *map(str, e['loc'])])}: {e['msg']}" for e in cause.errors())
        message = message.replace(str(cause), fields)
    violations = _default_bound_violations(params)
    if violations:
        message += (f" ({'; '.join(violations)}: pydantic does not check defaults, kdzoo does; "
                    "fix the default or the bound)")
    return message


def _reporting(register: Callable[..., None], kind: str, checks: Checks) -> Callable[..., None]:
    """``register`` that reports a refused component and goes on with the next one."""
    signature = inspect.signature(register)

    def register_each(*args: Any, **kwargs: Any) -> None:
        arguments = signature.bind(*args, **kwargs).arguments  # a call that does not fit: the hook's error
        try:
            register(*args, **kwargs)
        except PluginError as exc:
            checks.add("register", f"{kind} '{arguments.get('name')}'", FAIL, _explain(exc, arguments.get("params")))

    return register_each


def register_components(
    module: types.ModuleType, plugin: str, manager: pluggy.PluginManager, hooks: set[str], checks: Checks
) -> tuple[Registry, set[tuple[str, str]]]:
    """The plugin's components, registered alone into a fresh registry, and every
    (kind, name) it tried to register (refused ones included)."""
    registry = Registry()
    attempted: list[tuple[str, str]] = []
    for hook_name, kind in hookspecs.COMPONENT_HOOKS.items():
        if hook_name not in hooks:
            continue
        register = _reporting(make_register(registry, kind, plugin, attempted=attempted), kind, checks)
        for _plugin, exc in call_hook_each(manager, hook_name, plugin=module, register=register):
            checks.add("register", f"{hook_name}()", FAIL, f"raised {type(exc).__name__}: {exc}")
    return registry, set(attempted)


# ----------------------------------------------------------------------------- clashes
def installed_components(exclude: str) -> dict[tuple[str, str], list[str]]:
    """(kind, name) -> the installed plugins other than ``exclude`` that register it.

    Each plugin is loaded on its own (allow-list or not), so that a clash is found
    whichever of the two plugins kdzoo would refuse.
    """
    owners: dict[tuple[str, str], list[str]] = {}
    for ep in plugin_entry_points():
        if ep.name == exclude:
            continue
        host = PluginHost(new_manager(), Registry())
        try:
            register_plugin(host, ep.load(), PluginInfo(name=ep.name, module=ep.value))
        except Exception:  # noqa: BLE001 - a plugin kdzoo refuses registers nothing to clash with
            continue
        for key in host.registry.components:
            owners.setdefault(key, []).append(ep.name)
    return owners


def _load_order(plugin: str) -> tuple[int, str]:
    """The order kdzoo loads plugins in (built-ins first, then by name): the later one is refused."""
    return (BUILTIN_PLUGINS.index(plugin) if plugin in BUILTIN_PLUGINS else len(BUILTIN_PLUGINS), plugin)


def check_clash(component: Component, owners: dict[tuple[str, str], list[str]], checks: Checks) -> bool:
    """False (and a failure) when another installed plugin registers the same kind and name."""
    others = owners.get((component.kind, component.name), [])
    if not others:
        return True
    subject = f"{component.kind} '{component.name}'"
    also = " and ".join(f"plugin '{o}'" + (" (built-in)" if o in BUILTIN_PLUGINS else "") for o in others)
    kept = min([component.plugin, *others], key=_load_order)
    refused = ", ".join(f"plugin '{p}'" for p in [component.plugin, *others] if p != kept)
    checks.add(
        "register", subject, FAIL,
        f"{subject} is registered twice: {subject} is also registered by {also}. kdzoo loads built-ins first, "
        f"then plugins by name: it keeps plugin '{kept}' and refuses {refused} as a whole. Rename the "
        f"{component.kind}: a plugin never replaces another's components",
    )
    return False


# ----------------------------------------------------------------------------- what registering does not check
def check_registered(component: Component, checks: Checks) -> bool:
    subject = f"{component.kind} '{component.name}'"
    problems = []
    if not component.description:
        problems.append("no description: pass description='...' to register() or give the factory a docstring")
    params = component.params
    if params.model_config.get("extra") != "forbid":
        problems.append(
            f"params model {params.__name__} accepts unknown keys, so a misspelt param in a spec is silently "
            "ignored: set model_config = ConfigDict(extra='forbid')"
        )
    try:
        defaults = params.model_validate({}).model_dump(mode="json")
        json.dumps(defaults)
    except Exception as exc:  # run manifests record the params as JSON
        problems.append(f"the default params of {params.__name__} cannot be written as JSON: {exc}")
        defaults = {}
    try:
        params.model_json_schema()
    except Exception as exc:  # `kdzoo plugins --json` and `kdzoo schema` describe params by their schema
        problems.append(f"params model {params.__name__} has no JSON schema: {exc}")
    if problems:
        checks.add("register", subject, FAIL, "; ".join(problems))
        return False
    shown = ", ".join(f"{k}={v!r}" for k, v in defaults.items()) or "none"
    examples = f"; {len(component.examples)} example params" if component.examples else ""
    checks.add("register", subject, PASS, f"unique name, description, params {params.__name__} (defaults: {shown}){examples}")
    return True
