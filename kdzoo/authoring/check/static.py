"""The checks that run no component: the target resolves and imports, the plugin API it
needs, its hook implementations, and its source never unpickling."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import importlib.util
import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

from kdzoo import PLUGIN_API_VERSION
from kdzoo.authoring.catalogue import normalise
from kdzoo.authoring.check.report import FAIL, PASS, Checks
from kdzoo.errors import did_you_mean
from kdzoo.host import hookspecs
from kdzoo.host.loading import import_plugin_file, new_manager, plugin_entry_points, required_api


# ----------------------------------------------------------------------------- resolving the target
@dataclass
class Target:
    name: str  # the plugin name kdzoo uses (entry-point name, the module name, or the file name)
    module: str
    entry_point: md.EntryPoint | None = None
    file: Path | None = None  # a single-file plugin (plugins: [file.py] in a spec, --plugins-dir)

    @property
    def distribution(self) -> md.Distribution | None:
        return self.entry_point.dist if self.entry_point is not None else None

    def load(self) -> Any:  # the hook module (checked to be a module by the caller)
        if self.entry_point is not None:
            return self.entry_point.load()
        if self.file is not None:
            return import_plugin_file(self.file)  # exactly as `kdzoo run` loads plugin files
        return importlib.import_module(self.module)


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that fails, or a relative name
        return False


def resolve(target: str, checks: Checks) -> list[Target]:
    """The plugins ``target`` names: an entry point, a distribution's entry points, a module,
    or a plugin file (``my_losses.py``)."""
    if target.endswith(".py"):
        path = Path(target).resolve()
        if path.is_file():
            return [Target(path.name, str(path), file=path)]
        checks.add("resolve", target, FAIL, f"plugin file not found: {path}")
        return []
    eps = plugin_entry_points()
    by_name = [ep for ep in eps if ep.name == target]
    by_dist = [ep for ep in eps if ep.dist is not None and normalise(ep.dist.metadata["Name"]) == normalise(target)]
    by_module = [ep for ep in eps if ep.value.partition(":")[0].strip() == target]
    found = by_name or by_dist or by_module
    if found:
        return [Target(ep.name, ep.value.partition(":")[0].strip(), ep) for ep in found]
    try:
        dist = md.distribution(target)
    except md.PackageNotFoundError:
        dist = None
    if dist is not None:
        checks.add(
            "resolve", target, FAIL,
            f"distribution {dist.metadata['Name']} {dist.version} is installed but declares no entry point in the "
            f"'{hookspecs.ENTRY_POINT_GROUP}' group; add to its pyproject.toml: "
            f'[project.entry-points.{hookspecs.ENTRY_POINT_GROUP}] my-plugin = "my_plugin_module"',
        )
        return []
    if _module_exists(target):
        return [Target(target, target)]
    known = [ep.name for ep in eps] + [ep.dist.metadata["Name"] for ep in eps if ep.dist is not None]
    checks.add(
        "resolve", target, FAIL,
        f"no installed plugin, distribution or importable module named '{target}'{did_you_mean(target, known)}; "
        f"installed plugins: {', '.join(ep.name for ep in eps) or 'none'}",
    )
    return []


# ----------------------------------------------------------------------------- API and hooks
def check_api(module: types.ModuleType, checks: Checks) -> tuple[int, int] | None:
    """The plugin API the module needs, or None when kdzoo would refuse it."""
    provided = ".".join(map(str, PLUGIN_API_VERSION))
    try:
        required = required_api(module)
    except (TypeError, ValueError) as exc:
        checks.add("plugin-api", "KDZOO_PLUGIN_API", FAIL,
                   f"{getattr(module, 'KDZOO_PLUGIN_API', None)!r} is not a (major, minor) tuple of ints: {exc}")
        return None
    needed = ".".join(map(str, required))
    if required > PLUGIN_API_VERSION:
        checks.add("plugin-api", "KDZOO_PLUGIN_API", FAIL,
                   f"needs kdzoo plugin API {needed}, this kdzoo provides {provided}: kdzoo refuses to load it "
                   "(upgrade kdzoo, or lower KDZOO_PLUGIN_API if the plugin uses nothing newer)")
        return None
    if hasattr(module, "KDZOO_PLUGIN_API"):
        checks.add("plugin-api", "KDZOO_PLUGIN_API", PASS, f"needs plugin API {needed}; kdzoo provides {provided}")
    else:
        checks.add("plugin-api", "KDZOO_PLUGIN_API", PASS,
                   f"not declared, taken as {needed} (kdzoo provides {provided}); declare "
                   f"KDZOO_PLUGIN_API = {tuple(required)} in {module.__name__} to say what the plugin needs")
    return required


def _hookspec_names(manager: pluggy.PluginManager) -> list[str]:
    return sorted(name for name in dir(hookspecs) if manager.parse_hookspec_opts(hookspecs, name) is not None)


def _argument_names(function: Callable[..., Any]) -> list[str]:
    return [
        p.name
        for p in inspect.signature(function).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
    ]


def _hook_signature(hook: str) -> str:
    return f"{hook}({', '.join(_argument_names(getattr(hookspecs, hook)))})"


def _check_hookimpl(name: str, function: Callable[..., Any], opts: dict[str, Any], spec_names: list[str]) -> str | None:
    """Why a ``@hookimpl`` function does not fit its hookspec, or None when it does."""
    hook = opts.get("specname") or name
    if hook not in spec_names:
        return f"@hookimpl {name}() matches no kdzoo hook{did_you_mean(hook, spec_names)}; the hooks are {', '.join(spec_names)}"
    if hook in hookspecs.COMPONENT_HOOKS and (opts.get("wrapper") or opts.get("hookwrapper")):
        return f"{hook}() cannot be a wrapper: kdzoo calls it once per plugin with its own register()"
    spec_args = _argument_names(getattr(hookspecs, hook))
    impl_args = _argument_names(function)
    unknown = [arg for arg in impl_args if arg not in spec_args]
    expected = _hook_signature(hook)
    if unknown:
        quoted = ", ".join(f"'{arg}'" for arg in unknown)
        hints = "".join(did_you_mean(arg, spec_args) for arg in unknown)
        return f"{name}({', '.join(impl_args)}): argument {quoted} is not in the hookspec {expected}{hints}"
    if hook in hookspecs.COMPONENT_HOOKS and "register" not in impl_args:
        return f"{name}({', '.join(impl_args)}) must take the argument 'register': kdzoo calls {expected}"
    return None


def check_hooks(module: types.ModuleType, plugin: str, checks: Checks) -> tuple[pluggy.PluginManager, set[str]]:
    """Check every hook implementation of ``module``. Returns a plugin manager holding only
    ``module`` (as kdzoo registers it) and the component hooks that may be called."""
    manager = new_manager()
    spec_names = _hookspec_names(manager)
    usable: set[str] = set()
    failed = seen = False
    for name in sorted(dir(module)):
        function = getattr(module, name, None)
        if not callable(function):
            continue
        opts = manager.parse_hookimpl_opts(module, name)
        if opts is not None:
            seen = True
            problem = _check_hookimpl(name, function, dict(opts), spec_names)
            if problem is None:
                hook = opts.get("specname") or name
                checks.add("hook", f"{name}()", PASS, f"matches the hookspec {_hook_signature(hook)}")
                usable.add(hook)
            else:
                failed = True
                checks.add("hook", f"{name}()", FAIL, problem)
        elif name in spec_names:
            failed = seen = True
            checks.add("hook", f"{name}()", FAIL,
                       f"{name}() is named like a hook but not marked @hookimpl: decorate it with "
                       "@hookimpl (from kdzoo import hookimpl) so that pluggy sees it")
        elif name.startswith("register_") and getattr(function, "__module__", None) == module.__name__:
            hint = did_you_mean(name, spec_names)
            if hint:
                failed = True
                checks.add("hook", f"{name}()", FAIL, f"{name}() looks like a misspelt hook{hint}; kdzoo never calls it")
    if not seen:
        checks.add("hook", "hooks", FAIL, f"{module.__name__} implements no kdzoo hook; the hooks are {', '.join(spec_names)}")
        return manager, set()
    # pluggy's own validation, in case it objects to something the checks above let through.
    try:
        manager.register(module, name=plugin)
        manager.check_pending()
    except (ValueError, pluggy.PluginValidationError) as exc:
        if not failed:
            checks.add("hook", "hooks", FAIL, f"pluggy refused the plugin: {exc}")
        return manager, set()
    return manager, usable & set(hookspecs.COMPONENT_HOOKS)


# ----------------------------------------------------------------------------- unpickling
def _source_files(module: types.ModuleType) -> list[Path]:
    if hasattr(module, "__path__"):  # a package: every module in it
        return sorted(p for folder in module.__path__ for p in Path(folder).rglob("*.py"))
    return [Path(module.__file__)] if getattr(module, "__file__", None) else []


def _unpickling_call(node: ast.Call) -> str | None:
    """Why ``node`` can run code hidden in a file (pickle), or None."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
    keywords = {k.arg: k.value for k in node.keywords}

    def is_true(key: str) -> bool:
        return isinstance(keywords.get(key), ast.Constant) and keywords[key].value is True

    if owner in ("pickle", "cPickle", "dill", "joblib") and name in ("load", "loads"):
        return f"{owner}.{name}() unpickles"
    if owner == "torch" and name == "load" and not is_true("weights_only"):
        return "torch.load() without weights_only=True unpickles"
    if name == "load" and owner in ("np", "numpy") and is_true("allow_pickle"):
        return f"{owner}.load(allow_pickle=True) unpickles"
    return None


def check_unpickling(module: types.ModuleType, checks: Checks) -> None:
    """kdzoo's security model: files are read as tensors and JSON, never unpickled."""
    files = _source_files(module)
    root = Path(next(iter(module.__path__))).parent if hasattr(module, "__path__") else None
    found = []
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (OSError, SyntaxError, ValueError):
            continue
        found += [
            f"{path.relative_to(root) if root else path.name}:{node.lineno}: {reason}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and (reason := _unpickling_call(node))
        ]
    if found:
        checks.add("security", "unpickling", FAIL,
                   f"{'; '.join(found)}: a downloaded file could run code. Read tensors with safetensors "
                   "(or torch.load(..., weights_only=True)) and everything else as JSON")
    else:
        checks.add("security", "unpickling", PASS, f"no pickle loading in {len(files)} source file{'s' * (len(files) != 1)}")
