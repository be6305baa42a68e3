"""The strength axis of a study: each teacher augmentation policy's label and its place
between the weakest and the strongest.

Two policies of one name (RandAugment at magnitudes 5 and 12) are different strengths,
so a policy is its name *and* params, and its label shows the params that tell it
apart from the study's other policies of that name (``randaugment:magnitude=5``).
Strength comes from augmentation affinity (Gontijo-Lopes et al. 2020; ``kdzoo
affinity`` writes ``affinity.csv``): lower affinity, stronger policy. Without an
affinity file, the policies fall into two classes by name (weak, strong), as the study
reports did before the strength axis.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdzoo.errors import KdzooError

# Policy names as the two-class scale classes them; `kdzoo report --strong/--weak` overrides these.
STRONG_POLICIES = ("strong", "paper-strong", "randaugment", "autoaugment")
WEAK_POLICIES = ("weak", "paper-weak", "none")


@dataclass(frozen=True)
class Policy:
    """An augmentation as a run resolved it: name and params (hashable)."""

    name: str
    params: tuple[tuple[str, str], ...] = ()  # sorted (key, JSON value)

    @classmethod
    def of(cls, augmentation: dict[str, Any] | None) -> Policy:
        augmentation = augmentation or {}
        params = augmentation.get("params") or {}
        return cls(augmentation.get("name", ""), tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in params.items())))

    def matches(self, name: str, params: dict[str, Any]) -> bool:
        """Whether a label's name and (partial) params describe this policy."""
        own = dict(self.params)
        return name == self.name and all(key in own and json.loads(own[key]) == value for key, value in params.items())


def parse_label(label: str) -> tuple[str, dict[str, Any]]:
    """``randaugment:magnitude=5,num_ops=2`` -> ``("randaugment", {"magnitude": 5, "num_ops": 2})``."""
    name, _, rest = label.partition(":")
    params = {}
    for piece in filter(None, (p.strip() for p in rest.split(","))):
        key, _, value = piece.partition("=")
        params[key.strip()] = yaml.safe_load(value)
    return name.strip(), params


def policy_labels(policies: Iterable[Policy]) -> dict[Policy, str]:
    """Each policy's label: its name, plus the params whose values differ between the
    policies of that name (none when the name occurs once)."""
    by_name: dict[str, list[Policy]] = {}
    for policy in dict.fromkeys(policies):
        by_name.setdefault(policy.name, []).append(policy)
    labels = {}
    for name, variants in by_name.items():
        keys = sorted({k for p in variants for k, _ in p.params})
        varying = [k for k in keys if len({dict(p.params).get(k) for p in variants}) > 1]
        for p in variants:
            own = dict(p.params)
            shown = [f"{k}={json.loads(own[k])}" for k in varying if k in own]
            labels[p] = name + (":" + ",".join(shown) if shown else "")
    return labels


def read_affinity(path: Path) -> list[tuple[str, float]]:
    """``(policy label, affinity)`` rows of an ``affinity.csv`` written by ``kdzoo affinity``."""
    try:
        with Path(path).open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        table = [(row["policy"], float(row["affinity"])) for row in rows if row["affinity"] != ""]
        if not table:
            raise ValueError("no policy with an affinity")
        return table
    except (OSError, KeyError, ValueError) as exc:
        raise KdzooError(f"{path}: not an affinity table written by `kdzoo affinity` (policy, affinity columns): {exc}") from None


@dataclass
class StrengthScale:
    """Where each teacher policy label sits: ``levels`` weakest first; ``affinity`` per
    level when measured (None on the two-class scale)."""

    levels: list[str]
    level_of: dict[str, str]  # policy label -> its level (itself, or its class)
    affinity: dict[str, float] = field(default_factory=dict)
    source: str = ""
    ambiguous: list[str] = field(default_factory=list)  # levels that hold several policies (two-class scale)
    unplaced: list[str] = field(default_factory=list)  # teacher policies the affinity table does not cover

    def level(self, label: str) -> str | None:
        return self.level_of.get(label)

    @property
    def weakest(self) -> str | None:
        return self.levels[0] if self.levels else None

    @property
    def strongest(self) -> str | None:
        return self.levels[-1] if len(self.levels) > 1 else None


def affinity_scale(labels: dict[Policy, str], rows: list[tuple[str, float]], source: str) -> StrengthScale:
    """Levels ordered by affinity (highest first: the weakest policy); a policy the table
    does not cover stays off the scale."""
    affinity: dict[str, float] = {}
    for policy, label in labels.items():
        for row_label, value in rows:
            name, params = parse_label(row_label)
            if policy.matches(name, params):
                affinity[label] = value
                break
    levels = sorted(affinity, key=lambda label: -affinity[label])
    unplaced = sorted(label for label in labels.values() if label not in affinity)
    return StrengthScale(levels, {label: label for label in levels}, affinity, f"affinity ({source})", unplaced=unplaced)


def class_scale(labels: dict[Policy, str], strong: Iterable[str], weak: Iterable[str]) -> StrengthScale:
    strong, weak = tuple(strong), tuple(weak)
    level_of = {label: "strong" if p.name in strong else "weak" for p, label in labels.items() if p.name in strong or p.name in weak}
    levels = [c for c in ("weak", "strong") if c in level_of.values()]
    # Two policies in one class (RandAugment at two magnitudes) are two strengths: pairing
    # them as one would mix them, so the findings wait for an order (--affinity).
    ambiguous = [f"{c} ({', '.join(sorted(l for l, v in level_of.items() if v == c))})"
                 for c in levels if sum(v == c for v in level_of.values()) > 1]
    return StrengthScale(levels, level_of, {}, f"two classes (strong: {', '.join(strong)}; weak: {', '.join(weak)})", ambiguous)
