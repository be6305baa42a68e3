"""``kdzoo plugins check``: does a plugin load, register and run the way kdzoo needs?

:func:`check_plugin` takes a distribution name (``kdzoo-example-plugin``), an
entry-point name (``kdzoo-example``) or an importable module (``kdzoo_example``) and
returns a :class:`CheckReport`: one pass / fail / skip line per check, each with its
reason. The checks, in order (a plugin that cannot be imported or that needs a newer
plugin API stops there):

1. the entry point resolves and its module imports (:mod:`.static`);
2. the plugin API it declares (``KDZOO_PLUGIN_API``) is one this kdzoo provides;
3. every hook implementation matches a hookspec: pluggy's validation plus kdzoo's own
   (misspelt or unmarked hooks, component hooks that do not take ``register``);
4. its source never unpickles (``pickle.load``, ``torch.load`` without
   ``weights_only=True``): kdzoo's security model, see docs/plugins.md;
5. every component registers, called as kdzoo calls the hooks (:mod:`.register`): a
   name no other installed plugin registers, a description, a pydantic params model
   that forbids unknown keys and whose defaults satisfy their own bounds;
6. a smoke run of every component on tiny inputs, built as ``kdzoo run`` builds it
   (:mod:`.smoke`): with its default params, with each ``examples`` params set it
   declared, and with the ``--params NAME.KEY=VALUE`` given (:mod:`.params`).
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kdzoo.authoring.check.params import assign_params_options, parse_params_options, variants
from kdzoo.authoring.check.register import check_clash, check_registered, installed_components, register_components
from kdzoo.authoring.check.report import FAIL, PASS, SKIP, CheckReport, CheckResult, Checks, PluginSummary
from kdzoo.authoring.check.smoke import SMOKE_DATASET_SIZES, SMOKE_IMAGE_SIZE, SMOKE_NUM_CLASSES, smoke
from kdzoo.authoring.check.static import Target, check_api, check_hooks, check_unpickling, resolve
from kdzoo.host import hookspecs
from kdzoo.host.registry import Component

__all__ = [
    "FAIL",
    "PASS",
    "SKIP",
    "SMOKE_DATASET_SIZES",
    "SMOKE_IMAGE_SIZE",
    "SMOKE_NUM_CLASSES",
    "CheckReport",
    "CheckResult",
    "PluginSummary",
    "check_plugin",
]


@dataclass
class _Checked:
    """One plugin after the checks that run nothing."""

    checks: Checks
    registered: list[Component] = field(default_factory=list)  # all it registered
    fit: list[Component] = field(default_factory=list)  # ... that passed the registration checks: smoke-run
    attempted: set[str] = field(default_factory=set)  # names it tried to register, refused ones included


def _check_static(target: Target, report: CheckReport, checks: Checks) -> _Checked:
    checked = _Checked(checks)
    ep = target.entry_point
    dist = target.distribution
    summary = PluginSummary(
        name=target.name,
        module=target.module,
        distribution=dist.metadata["Name"] if dist is not None else None,
        version=dist.version if dist is not None else None,
    )
    report.plugins.append(summary)
    try:
        module = target.load()
    except Exception as exc:
        what = f"entry point {ep.name} = {ep.value}" if ep is not None else f"module {target.module}"
        checks.add("import", target.module, FAIL, f"{what} cannot be imported: {type(exc).__name__}: {exc}")
        return checked
    if ep is not None:
        checks.add("import", target.module, PASS, f"entry point {ep.name} = {ep.value} imports")
    elif target.file is not None:
        checks.add("import", target.module, PASS,
                   "plugin file imports; use it with `plugins: [FILE]` in a spec or `kdzoo run --plugins-dir DIR`")
    else:
        checks.add("import", target.module, PASS,
                   f"module imports; it is not installed with an entry point in the '{hookspecs.ENTRY_POINT_GROUP}' "
                   "group, so kdzoo will not load it until it is")
    if not isinstance(module, types.ModuleType):
        checks.add("import", target.module, FAIL, f"the entry point names a {type(module).__name__}; it must name the hook module")
        return checked
    required = check_api(module, checks)
    if required is None:
        return checked
    summary.api = ".".join(map(str, required))
    manager, hooks = check_hooks(module, target.name, checks)
    check_unpickling(module, checks)
    failures_before = checks.failed
    registry, attempted = register_components(module, target.name, manager, hooks, checks)
    checked.attempted = {name for _kind, name in attempted}
    if hooks and not registry.components and checks.failed == failures_before:
        checks.add("register", target.name, FAIL, f"{', '.join(sorted(hooks))} registered nothing")
    owners = installed_components(exclude=target.name) if registry.components else {}
    for component in sorted(registry.components.values(), key=lambda c: (hookspecs.KINDS.index(c.kind), c.name)):
        summary.components.setdefault(component.kind, []).append(component.name)
        checked.registered.append(component)
        if check_clash(component, owners, checks) and check_registered(component, checks):
            checked.fit.append(component)
    return checked


@contextmanager
def _one_thread() -> Iterator[None]:
    """Smoke runs use tiny tensors: one thread is fastest, and on a busy machine a pool
    of threads waiting for each other makes them many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def check_plugin(target: str, params: Iterable[str] | Mapping[str, Mapping[str, Any]] = ()) -> CheckReport:
    """Check the plugin named by ``target`` (distribution, entry point or module name).

    ``params``: ``NAME.KEY=VALUE`` strings (VALUE is YAML; the ``--params`` options of
    ``kdzoo plugins check``) or ``{NAME: {KEY: VALUE}}``: component NAME is smoke-run
    with them too, besides its defaults and its declared examples. Params that name no
    component of the plugin, or that its params model refuses, raise KdzooError.
    """
    options = parse_params_options(params)
    report = CheckReport(target)
    resolving = Checks(target)
    with _one_thread():
        checked = [_check_static(t, report, Checks(t.name)) for t in resolve(target, resolving)]
        report.results += resolving.results
        registered = [c for one in checked for c in one.registered]
        attempted = {name for one in checked for name in one.attempted}
        requested: dict[str, dict[str, Any]] = {}
        failed = resolving.failed or any(one.checks.failed for one in checked)
        if options and (registered or attempted or not failed):  # else the report says why there is nothing
            where = f"plugin '{checked[0].checks.plugin}'" if len(checked) == 1 else f"'{target}'"
            requested = assign_params_options(options, registered, attempted, where)
        for one in checked:
            for component in one.fit:
                for suffix, variant in variants(component, requested):
                    smoke(component, one.checks, variant, suffix)
            report.results += one.checks.results
    return report
