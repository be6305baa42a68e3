"""Which arms of a grid train together in one pass (fused arms, :mod:`kdzoo.run.trainer`).

Arms fuse when everything the pass shares is the same: the data, the augmentation, the
teachers (and their views), the batch size, the epochs, the seed, and where and how the
pass computes (device, precision, threads, memory layout, compile, sync_bn). They may
differ in what each arm trains on its own: its student (or model) and its initialisation
seed (``init_seed``), losses and their weights, optimizer, schedule, stages (each arm
follows its own: a stage is an arm's weights, optimizer and what it trains), metrics
and evaluation. Torch-free.
"""

from __future__ import annotations

import json
from typing import Any

from kdzoo.spec import AnySpec

#: Spec fields each arm of a pass has its own of; every other field must be equal.
OWN_FIELDS = frozenset({"name", "init_seed", "student", "model", "losses", "optimizer", "schedule", "stages", "metrics", "eval"})


def shared_part(spec: AnySpec) -> str:
    """What ``spec`` shares with the arms it can fuse with, as one comparable value."""
    shared: dict[str, Any] = {k: v for k, v in spec.model_dump(mode="json").items() if k not in OWN_FIELDS}
    return json.dumps(shared, sort_keys=True)


def fusion_groups(members: list, fuse: bool = True) -> list[list]:
    """``members`` (anything with a ``spec``) grouped into passes, each group in grid order
    and the groups in the order of their first member; one per group with ``fuse`` off."""
    if not fuse:
        return [[member] for member in members]
    groups: dict[str, list] = {}
    for member in members:
        groups.setdefault(shared_part(member.spec), []).append(member)
    return list(groups.values())
