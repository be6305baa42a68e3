"""Pretrained weights a spec's models need: whether the hub caches hold them, and fetching them.

A model component may register a ``weights`` function (``register(..., weights="pkg.mod:locate")``,
see docs/hooks.md): ``locate(params, *, download)`` returns a description of the weights
the validated ``params`` load (``hub``, ``id``, ``revision``, ``cache``, ``fetched``), or
``None`` when they need none from a hub. With ``download=False`` it only looks in the
caches and raises a ``KdzooError`` when the weights are missing and the environment is
offline; with ``download=True`` it downloads what is missing. ``kdzoo validate`` and
``kdzoo run`` ask before any work (:func:`check_weights_available`); ``kdzoo fetch``
downloads (:func:`fetch_weights`) on a machine with internet, for clusters without.

Torch-free: the plugin's function is imported only for a spec whose models have one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kdzoo import rundir
from kdzoo.errors import KdzooError, PluginError
from kdzoo.host.build import plugin_code
from kdzoo.host.registry import Component, Registry

Log = Callable[[str], None]

# A plugin's message may say "run `kdzoo fetch SPEC` ..."; the core puts the spec's own command there.
FETCH_PLACEHOLDER = "kdzoo fetch SPEC"


@dataclass(frozen=True)
class ModelUse:
    """One place in a spec where a model is built from a component reference."""

    arm: str | None  # the matrix arm; None for a spec without a matrix
    path: str  # where in the spec, e.g. "student.model" or "teachers[t1].train.model"
    name: str
    params: dict[str, Any]

    @property
    def where(self) -> str:
        return f"[matrix arm {self.arm}] {self.path}" if self.arm else self.path


def model_refs(runs: Sequence[tuple[str, Any]]) -> list[ModelUse]:
    """Every model reference of every arm: the model of a train spec, the student, inline
    teachers' ``train.model`` and the model in checkpoint teachers' manifests (a checkpoint
    teacher is rebuilt from its model reference before its weights are loaded)."""
    uses: list[ModelUse] = []
    grid = len(runs) > 1
    for arm_name, spec in runs:
        arm = arm_name if grid else None

        def add(path: str, ref: Any, arm: str | None = arm) -> None:
            uses.append(ModelUse(arm, path, ref.name, dict(ref.params)))

        def walk(spec: Any, where: str, arm: str | None = arm) -> None:  # a distilled teacher: its student and teachers
            if getattr(spec, "model", None) is not None:
                add(f"{where}model", spec.model)
            if getattr(spec, "student", None) is not None:
                add(f"{where}student.model", spec.student.model)
            for teacher in getattr(spec, "teachers", None) or ():
                if teacher.train is not None:
                    walk(teacher.train, f"{where}teachers[{teacher.name}].train.")
                elif teacher.checkpoint is not None:
                    _, manifest = rundir.resolve_checkpoint(teacher.checkpoint)  # validated when the spec loaded
                    model = manifest.get("model") or {}
                    uses.append(ModelUse(arm, f"{where}teachers[{teacher.name}].checkpoint", model.get("name", ""), dict(model.get("params") or {})))

        walk(spec, "")
    return uses


def _grouped(uses: list[ModelUse], registry: Registry) -> list[tuple[Component, Any, list[ModelUse]]]:
    """The distinct (model, params) pairs whose component can locate weights, with every use of each."""
    groups: dict[tuple[str, str], tuple[Component, Any, list[ModelUse]]] = {}
    for use in uses:
        component = registry.get("model", use.name)
        if component.weights is None:
            continue
        params = component.validate_params(use.params)
        key = (use.name, json.dumps(params.model_dump(mode="json"), sort_keys=True, default=str))
        groups.setdefault(key, (component, params, []))[2].append(use)
    return list(groups.values())


def _places(uses: list[ModelUse]) -> str:
    more = len(uses) - 1
    return uses[0].where + (f" (and {more} more place{'s' if more > 1 else ''})" if more else "")


def _locate(component: Component, params: Any, download: bool) -> dict[str, Any] | None:
    locate = component.resolve_weights()
    with plugin_code(component, "its weights function"):
        source = locate(params, download=download)
    if source is not None and not isinstance(source, dict):
        raise PluginError(
            f"plugin '{component.plugin}': model '{component.name}' weights function returned "
            f"{type(source).__name__}, not a dict or None"
        )
    return source


def check_weights_available(
    runs: Sequence[tuple[str, Any]], registry: Registry, fetch_command: str = FETCH_PLACEHOLDER
) -> list[tuple[list[ModelUse], dict[str, Any]]]:
    """Raise a ``KdzooError`` naming every model whose pretrained weights are missing from the
    caches of an offline machine (and the fix, ``fetch_command``); otherwise return the
    hub weights the runs need, each with the places that need it (nothing is downloaded)."""
    found: list[tuple[list[ModelUse], dict[str, Any]]] = []
    problems: list[str] = []
    for component, params, uses in _grouped(model_refs(runs), registry):
        try:
            source = _locate(component, params, download=False)
        except KdzooError as exc:
            problems.append(f"{_places(uses)}: {str(exc).replace(FETCH_PLACEHOLDER, fetch_command)}")
            continue
        if source is not None:
            found.append((uses, source))
    if problems:
        raise KdzooError("pretrained weights not available: " + "; ".join(problems))
    return found


def refuse_missing_weights(runs: Sequence[tuple[str, Any]], registry: Registry, source: str, overrides: Sequence[str] = (),
                           plugins_dirs: Sequence[Any] = ()) -> None:
    """``check_weights_available`` for a spec read from ``source`` (a file, or the Python
    API's ``<spec dict>``): the error names the spec and the ``kdzoo fetch`` command (with
    the same ``--set`` and ``--plugins-dir``) that gets the missing weights."""
    import shlex

    if source.startswith("<"):  # a dict: no file to name
        command = f"{FETCH_PLACEHOLDER} (SPEC: the dict saved as a YAML file)"
    else:
        command = shlex.join(["kdzoo", "fetch", source, *(f"--set={o}" for o in overrides), *(f"--plugins-dir={d}" for d in plugins_dirs)])
    try:
        check_weights_available(runs, registry, fetch_command=command)
    except KdzooError as exc:
        raise KdzooError(f"{source}: {exc}") from None


def describe_source(source: dict[str, Any]) -> str:
    """One line for a located weight: hub, id, revision, where it is cached."""
    version = source.get("revision") or (f"sha256 {source['sha256']}" if source.get("sha256") else "latest")
    cache = source.get("cache")
    return f"{source.get('hub', '?')} {source.get('id', '?')} @ {version}" + (f" in {cache}" if cache else " (not cached)")


def fetch_weights(runs: Sequence[tuple[str, Any]], registry: Registry, log: Log) -> list[tuple[list[ModelUse], dict[str, Any]]]:
    """Download into the hub caches every pretrained weight the runs need (all arms, inline
    teachers included), logging one line per weight; returns what was fetched or found."""
    fetched: list[tuple[list[ModelUse], dict[str, Any]]] = []
    for component, params, uses in _grouped(model_refs(runs), registry):
        try:
            source = _locate(component, params, download=True)
        except KdzooError as exc:
            raise KdzooError(f"{_places(uses)}: {exc}") from exc
        if source is None:
            continue
        state = "downloaded" if source.get("fetched") else "already cached"
        log(f"{component.name} ({_places(uses)}): {describe_source(source)} [{state}]")
        fetched.append((uses, source))
    return fetched
