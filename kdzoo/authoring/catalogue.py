"""The plugin catalogue: ``registry.yaml``, the list ``kdzoo plugins --available`` shows
and ``kdzoo install NAME`` installs from.

A bare name is only installed when the catalogue lists it, so a typo gets a
did-you-mean instead of whatever a package index holds under the misspelt name.
Torch-free (the ``plugins`` command must answer in about a second).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from kdzoo import __version__
from kdzoo.errors import KdzooError, did_you_mean

CATALOGUE_ENV = "KDZOO_CATALOGUE"
CATALOGUE_FILE = "registry.yaml"
DISTRIBUTION_NAME = r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$"  # PEP 508 project names

# Kept literal (not imported from kdzoo.host.hookspecs.KINDS) so the schema shows the choices.
Kind = Literal["model", "dataset", "augmentation", "loss", "metric"]


def normalise(name: str) -> str:
    """PEP 503 normalisation: ``Kdzoo_Example.Plugin`` and ``kdzoo-example-plugin`` are one name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_version(version: str) -> tuple[int, ...]:
    """``"0.1.0"`` -> ``(0, 1, 0)``; pre-release and local suffixes are ignored."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def is_url(requirement: str) -> bool:
    return "://" in requirement or requirement.startswith("git+")


def is_local_requirement(requirement: str) -> bool:
    """A path relative to the catalogue (it has a '/' or starts with '.'), not a PyPI name or a URL."""
    return not is_url(requirement) and ("/" in requirement or requirement.startswith("."))


class CatalogueEntry(BaseModel):
    """One installable plugin distribution."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=DISTRIBUTION_NAME, description="distribution name: what `kdzoo install NAME` takes")
    pip: str = Field(
        min_length=1, description="pip requirement: a PyPI name (with version specifiers), a URL, or a path relative to this file"
    )
    summary: str = Field(min_length=1, description="one line: what the plugin adds")
    kinds: dict[Kind, list[str]] = Field(min_length=1, description="component kind -> names, as the plugin registers them")
    homepage: str | None = Field(None, pattern=r"^https?://", description="project page")
    min_kdzoo: str = Field("0.1", pattern=r"^\d+(\.\d+){0,2}$", description="oldest kdzoo release the plugin works with")
    builtin: bool = Field(False, description="ships in this repository under plugins/")

    @field_validator("kinds")
    @classmethod
    def _names_unique_and_sorted(cls, kinds: dict[str, list[str]]) -> dict[str, list[str]]:
        for kind, names in kinds.items():
            if not names:
                raise ValueError(f"{kind}: list at least one component (or drop the kind)")
            if len(set(names)) != len(names):
                raise ValueError(f"{kind}: names repeat: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
        return {kind: sorted(names) for kind, names in kinds.items()}

    @model_validator(mode="after")
    def _builtins_are_local(self) -> CatalogueEntry:
        if self.builtin and not self.pip.startswith("plugins/"):
            raise ValueError(f"builtin plugin '{self.name}' must be installed from its folder, plugins/<name>, not '{self.pip}'")
        return self

    @property
    def needs_newer_kdzoo(self) -> bool:
        return parse_version(self.min_kdzoo) > parse_version(__version__)

    def requirement(self, base_dir: Path) -> str:
        """What to hand to pip: local paths are made absolute against the catalogue's folder."""
        return str((base_dir / self.pip).resolve()) if is_local_requirement(self.pip) else self.pip


class Catalogue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = Field(1, description="schema version of this file")
    plugins: list[CatalogueEntry] = Field(default_factory=list)
    _source: Path | None = PrivateAttr(None)  # the file it was read from

    @model_validator(mode="after")
    def _names_unique(self) -> Catalogue:
        names = [normalise(entry.name) for entry in self.plugins]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"plugins listed twice: {', '.join(repeated)}")
        return self

    @property
    def base_dir(self) -> Path:
        """Local requirements are relative to the catalogue file's folder."""
        return self._source.parent if self._source is not None else Path.cwd()

    def names(self) -> list[str]:
        return [entry.name for entry in self.plugins]

    def find(self, name: str) -> CatalogueEntry | None:
        wanted = normalise(name)
        return next((entry for entry in self.plugins if normalise(entry.name) == wanted), None)

    def get(self, name: str) -> CatalogueEntry:
        entry = self.find(name)
        if entry is None:
            raise KdzooError(
                f"'{name}' is not in the plugin catalogue{did_you_mean(name, self.names())}; "
                f"`kdzoo plugins --available` lists {len(self.plugins)} plugins"
            )
        return entry


def default_path() -> Path:
    """``$KDZOO_CATALOGUE``, else ``registry.yaml`` at the root of the kdzoo source tree."""
    override = os.environ.get(CATALOGUE_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / CATALOGUE_FILE


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """Read and schema-check a catalogue file; every problem is a KdzooError naming the field."""
    path = Path(path) if path is not None else default_path()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KdzooError(f"plugin catalogue {path} not found (set {CATALOGUE_ENV} to use another file)") from None
    except yaml.YAMLError as exc:
        raise KdzooError(f"plugin catalogue {path} is not valid YAML: {exc}") from None
    try:
        catalogue = Catalogue.model_validate(data if data is not None else {})
    except ValidationError as exc:
        problems = "\n".join(f"  - {_where(err['loc'], data)}: {err['msg']}" for err in exc.errors())
        raise KdzooError(f"invalid plugin catalogue {path}:\n{problems}") from None
    catalogue._source = path.resolve()
    return catalogue


def _where(loc: tuple, data: object) -> str:
    """``plugins[2] (kdzoo-foo).kinds`` rather than ``plugins.2.kinds``."""
    parts: list[str] = []
    node = data
    for key in loc:
        if isinstance(key, int) and parts:
            parts[-1] += f"[{key}]"
            node = node[key] if isinstance(node, list) and key < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                parts[-1] += f" ({node['name']})"
        else:
            parts.append(str(key))
            node = node.get(key) if isinstance(node, dict) else None
    return ".".join(parts) or "(top level)"
