"""Components registered by plugins, keyed by (kind, name): the one place that dedupes
names, checks params models and says where an unknown name might have come from."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from kdzoo.api.params import NoParams
from kdzoo.errors import KdzooError, PluginError, did_you_mean
from kdzoo.host.hookspecs import KINDS


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    factory: Callable[..., Any] | str
    params: type[BaseModel]
    description: str
    plugin: str
    examples: tuple[dict[str, Any], ...] = ()  # non-default params `plugins check` also runs
    # Models only: `locate(params, *, download) -> dict | None` says where the pretrained
    # weights the params need come from, whether they are cached, and fetches them
    # (kdzoo/host/weights.py); a callable or "module:attribute", imported when asked.
    weights: Callable[..., Any] | str | None = None

    def resolve_factory(self) -> Callable[..., Any]:
        return self.resolve(self.factory, "factory")

    def resolve_weights(self) -> Callable[..., Any] | None:
        """The model's weights function (``weights=``), or None."""
        return None if self.weights is None else self.resolve(self.weights, "weights function")

    def resolve(self, target: Callable[..., Any] | str, what: str) -> Callable[..., Any]:
        """A callable given as itself or as ``"module:attribute"`` (imported now)."""
        if callable(target):
            return target
        module_name, _, attr = target.partition(":")
        try:
            found: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError) as exc:
            raise PluginError(
                f"plugin '{self.plugin}': {self.kind} '{self.name}' {what} "
                f"'{target}' cannot be imported: {exc}"
            ) from exc
        return found

    def validate_params(self, params: dict[str, Any] | BaseModel | None) -> BaseModel:
        if isinstance(params, self.params):
            return params
        return self.params.model_validate(params or {})

    def build(self, params: dict[str, Any] | BaseModel | None = None, **context: Any) -> Any:
        return self.resolve_factory()(self.validate_params(params), **context)


@dataclass
class Registry:
    """All components of all loaded plugins, plus which plugins failed to load."""

    components: dict[tuple[str, str], Component] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # plugin -> reason
    # (kind, name) a plugin tried to register before it failed -> that plugin
    failed_components: dict[tuple[str, str], str] = field(default_factory=dict)

    def add(self, component: Component) -> None:
        key = (component.kind, component.name)
        existing = self.components.get(key)
        if existing is not None:
            if existing.plugin == component.plugin:
                raise PluginError(f"plugin '{component.plugin}': {component.kind} '{component.name}' is registered twice by the same plugin")
            raise PluginError(
                f"{component.kind} '{component.name}' is registered twice: plugin '{existing.plugin}' already "
                f"provides it, so plugin '{component.plugin}' is refused (rename its {component.kind}: a plugin "
                f"never replaces another's components)"
            )
        self.components[key] = component

    def unknown(self, kind: str, name: str) -> str:
        """Why ``name`` is not a ``kind``: its plugin failed to load, or a did-you-mean."""
        plugin = self.failed_components.get((kind, name))
        if plugin is not None and plugin in self.failures:
            return f"{kind} '{name}' comes from plugin '{plugin}', which failed to load: {self.failures[plugin]}"
        available = self.names(kind)
        message = f"unknown {kind} '{name}'{did_you_mean(name, available)}; available: {', '.join(available) or 'none'}"
        if self.failures:
            message += f" (plugins that failed to load, which may provide it: {', '.join(sorted(self.failures))})"
        return message

    def get(self, kind: str, name: str) -> Component:
        try:
            return self.components[(kind, name)]
        except KeyError:
            raise KdzooError(self.unknown(kind, name)) from None

    def names(self, kind: str) -> list[str]:
        return sorted(name for (k, name) in self.components if k == kind)

    def by_kind(self, kind: str) -> list[Component]:
        return [self.components[(kind, n)] for n in self.names(kind)]

    def build(self, kind: str, name: str, params: Any = None, **context: Any) -> Any:
        return self.get(kind, name).build(params, **context)


def check_params_model(params: type[BaseModel], where: str, examples: tuple[dict[str, Any], ...] = ()) -> None:
    """The params model must build from no input, its defaults must satisfy its own bounds
    (pydantic does not validate defaults by itself), and every example must validate."""
    if not (inspect.isclass(params) and issubclass(params, BaseModel)):
        raise PluginError(f"{where}: params must be a pydantic BaseModel subclass")
    try:
        defaults = params.model_validate({})
        params.model_validate(defaults.model_dump())  # re-validated as input: bounds apply
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join([params.__name__, *map(str, e['loc'])])}: {e['msg']}" for e in exc.errors())
        raise PluginError(f"{where}: params model defaults do not validate: {problems}") from None
    except Exception as exc:  # noqa: BLE001 - a validator that crashes
        raise PluginError(f"{where}: params model cannot be built from its defaults: {exc!r}") from None
    for example in examples:
        try:
            params.model_validate(example)
        except ValidationError as exc:
            raise PluginError(f"{where}: example params {example} do not validate: {exc.errors()[0]['msg']}") from None


def make_register(registry: Registry, kind: str, plugin: str, attempted: list[tuple[str, str]] | None = None) -> Callable[..., None]:
    """The ``register`` callable handed to one plugin's ``register_<kind>s`` hook."""
    assert kind in KINDS

    def register(
        name: str,
        factory: Callable[..., Any] | str,
        params: type[BaseModel] | None = None,
        description: str = "",
        examples: list[dict[str, Any]] | tuple[dict[str, Any], ...] = (),
        weights: Callable[..., Any] | str | None = None,
    ) -> None:
        where = f"plugin '{plugin}': {kind} '{name}'"
        if not isinstance(name, str) or not name or name != name.strip():
            raise PluginError(f"plugin '{plugin}': {kind} name {name!r} is not a non-empty string")
        if attempted is not None:
            attempted.append((kind, name))
        if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
            raise PluginError(f"{where}: factory must be a callable or 'module:attribute'")
        if weights is not None:
            if kind != "model":
                raise PluginError(f"{where}: weights= is for models (it locates and fetches pretrained weights)")
            if not (callable(weights) or (isinstance(weights, str) and ":" in weights)):
                raise PluginError(f"{where}: weights must be a callable or 'module:attribute'")
        params = params or NoParams
        examples = tuple(examples) + tuple(getattr(params, "examples", ()))
        check_params_model(params, where, examples)
        if not description and callable(factory):
            # The factory's own docstring only: a Loss subclass must not borrow Loss's.
            doc = factory.__dict__.get("__doc__") if inspect.isclass(factory) else factory.__doc__
            doc = inspect.cleandoc(doc) if isinstance(doc, str) else ""
            description = doc.splitlines()[0] if doc else ""
        registry.add(Component(kind, name, factory, params, description.strip(), plugin, examples, weights))

    return register
