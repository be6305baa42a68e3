"""The runs of a study: finished run directories read as arms, arms grouped over seeds,
and the teachers they used (read once each from their checkpoint manifests).

Owns what an arm and an arm group are; the run-directory format itself is
:mod:`kdzoo.rundir`'s.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from kdzoo import rundir
from kdzoo.api.keys import TRAIN_ROLE, metric_key
from kdzoo.errors import KdzooError
from kdzoo.rundir import METRICS_FILE, SPEC_FILE, SUMMARY_FILE
from kdzoo.study.strength import Policy

# The seed part of an arm name as `kdzoo run` builds it from `matrix: {seed: [...]}`.
SEED_PART = re.compile(r"(?:^|_)seed\d+(?=_|$)")


# ----------------------------------------------------------------------------- runs
@dataclass
class Arm:
    """One finished run: its resolved spec, summary and per-epoch records."""

    name: str
    path: Path
    spec: dict[str, Any]
    summary: dict[str, Any]
    records: list[dict[str, Any]]

    @property
    def role(self) -> str:
        return self.summary["role"]

    @property
    def final(self) -> dict[str, Any]:
        return self.summary.get("final", {})

    @property
    def seed(self) -> int:
        return int(self.spec.get("seed", self.summary.get("seed", 0)))

    @property
    def teacher_roles(self) -> list[str]:
        return list(self.summary.get("teachers", {}))


def is_run_dir(path: Path) -> bool:
    return rundir.is_finished(path)


def read_arm(path: Path, name: str | None = None) -> Arm:
    metrics = path / METRICS_FILE
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    return Arm(
        name=name or path.name,
        path=path,
        spec=yaml.safe_load((path / SPEC_FILE).read_text()) or {},
        summary=json.loads((path / SUMMARY_FILE).read_text()),
        records=records,
    )


def load_arms(run_dir: Path, log: Callable[[str], None] = print) -> list[Arm]:
    """Every finished arm of a grid (sorted by name), or the one run of a run directory."""
    run_dir = Path(run_dir)
    paths = rundir.arm_dirs(run_dir)
    if paths is not None:
        arms = []
        for path in paths:
            if is_run_dir(path):
                arms.append(read_arm(path))
            else:
                log(f"skipped {path.name}: not finished (no {SUMMARY_FILE})")
        if not arms:
            raise KdzooError(f"{run_dir}: no finished arm under {run_dir / rundir.ARMS_DIR}")
        return arms
    if is_run_dir(run_dir):
        name = (yaml.safe_load((run_dir / SPEC_FILE).read_text()) or {}).get("name") or run_dir.name
        return [read_arm(run_dir, name)]
    raise KdzooError(f"{run_dir} is neither a grid directory ({rundir.ARMS_DIR}/) nor a finished run directory ({SUMMARY_FILE} and {SPEC_FILE})")


# ----------------------------------------------------------------------------- groups
def seedless_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec without what differs between the seeds of one arm: its name and every seed
    (inline teachers' seeds follow the run's seed unless set)."""
    spec = copy.deepcopy(spec)
    for key in ("name", "seed", "matrix"):
        spec.pop(key, None)
    for teacher in spec.get("teachers") or []:
        if isinstance(teacher.get("train"), dict):
            teacher["train"].pop("seed", None)
    return spec


def group_label(arm_name: str) -> str:
    return SEED_PART.sub("", arm_name).strip("_")


@dataclass
class Group:
    """Arms that differ only by seed."""

    label: str
    arms: list[Arm]
    teacher_policies: list[str] = field(default_factory=list)  # per teacher, in spec order
    student_policy: str = ""

    @property
    def seeds(self) -> list[int]:
        return sorted({arm.seed for arm in self.arms})

    @property
    def n_teachers(self) -> int:
        return len(self.teacher_policies)


def group_arms(arms: list[Arm], teacher_policy: Callable[[Arm, str], str], fallback_label: str = "run") -> list[Group]:
    """Group by the seedless spec; a label left empty (a grid over seeds only) becomes ``fallback_label``."""
    groups: dict[str, Group] = {}
    labels: set[str] = set()
    for arm in arms:
        key = json.dumps(seedless_spec(arm.spec), sort_keys=True, default=str)
        if key not in groups:
            label = group_label(arm.name) or fallback_label
            if label in labels:  # distinct specs whose names differ only by seed parts
                label = arm.name
            labels.add(label)
            groups[key] = Group(
                label=label,
                arms=[],
                teacher_policies=[teacher_policy(arm, role) for role in arm.teacher_roles],
                student_policy=(arm.spec.get("augmentation") or {}).get("name", ""),
            )
        groups[key].arms.append(arm)
    return list(groups.values())


# ----------------------------------------------------------------------------- teachers
class TeacherRow(NamedTuple):
    """One distinct teacher of a grid, as the report's teacher table prints it."""

    teacher: str  # its checkpoint's directory name
    role: str
    policy: str  # the label of its training augmentation
    seed: int | None
    top1: float | None  # test top-1
    ece: float | None  # ECE, 10 bins
    used_by: int = 0  # how many arms distilled from it


TEACHER_HEADERS = ["teacher", "role", "policy", "seed", "test top-1", "ECE (10 bins)", "used by arms"]


class TeacherIndex:
    """The teachers the arms used, read once each from their checkpoint manifests."""

    def __init__(self) -> None:
        self.manifests: dict[str, dict[str, Any]] = {}

    def manifest(self, arm: Arm, role: str) -> dict[str, Any]:
        source = arm.summary["teachers"][role].get("checkpoint", "")
        if source not in self.manifests:
            try:
                _, self.manifests[source] = rundir.resolve_checkpoint(source)
            except KdzooError:
                self.manifests[source] = {}  # moved or deleted: the arm's own figures still serve
        return self.manifests[source]

    def policy(self, arm: Arm, role: str) -> Policy:
        """The teacher's training augmentation, name and params."""
        manifest = self.manifest(arm, role)
        if manifest:
            return Policy.of((manifest.get("spec") or {}).get("augmentation"))
        for teacher in arm.spec.get("teachers") or []:  # checkpoint gone: the inline train spec
            if teacher.get("name") == role and isinstance(teacher.get("train"), dict):
                return Policy.of(teacher["train"].get("augmentation"))
        return Policy("")

    def seed(self, arm: Arm, role: str) -> int | None:
        seed = self.manifest(arm, role).get("seed")
        return int(seed) if seed is not None else None

    def table(self, arms: list[Arm], labels: dict[Policy, str]) -> list[TeacherRow]:
        """One row per distinct teacher checkpoint (print under ``TEACHER_HEADERS``)."""
        rows: dict[str, TeacherRow] = {}
        used: dict[str, set[str]] = {}
        for arm in arms:
            for role in arm.teacher_roles:
                source = arm.summary["teachers"][role].get("checkpoint", "")
                used.setdefault(source, set()).add(arm.name)
                if source in rows:
                    continue
                manifest = self.manifest(arm, role)
                own = manifest.get("metrics", {})
                # A teacher trained without some metric is still measured, frozen, by the arm.
                # The manifest holds the teacher's own train run, so its role is TRAIN_ROLE.
                top1 = own.get(metric_key("test", "top1", TRAIN_ROLE), arm.final.get(metric_key("test", "top1", role)))
                ece = own.get(metric_key("test", "ece10", TRAIN_ROLE), arm.final.get(metric_key("test", "ece10", role)))
                rows[source] = TeacherRow(Path(source).name or source, role, labels.get(self.policy(arm, role), ""),
                                          manifest.get("seed"), top1, ece)
        table = [row._replace(used_by=len(used[source])) for source, row in rows.items()]
        table.sort(key=lambda row: (str(row.role), str(row.policy), row.seed if row.seed is not None else -1))
        return table
