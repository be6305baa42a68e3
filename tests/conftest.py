"""Shared fixtures: tiny specs that train in about a second on a CPU core."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml


TINY_DATA = {"name": "synthetic-shapes", "params": {"train_size": 96, "test_size": 48, "num_classes": 4}}
TINY_MODEL = {"name": "cifar-resnet", "params": {"depth": 8, "width": 4}}

TINY_TRAIN = {
    "kind": "train",
    "name": "tiny-train",
    "epochs": 2,
    "batch_size": 32,
    "precision": "fp32",
    "threads": 1,
    "data": TINY_DATA,
    "model": TINY_MODEL,
    "augmentation": "weak",
}

TINY_DISTILL = {
    "kind": "distill",
    "name": "tiny-distill",
    "epochs": 2,
    "batch_size": 32,
    "precision": "fp32",
    "threads": 1,
    "data": TINY_DATA,
    "student": {"model": TINY_MODEL},
    "teachers": [{"name": "t1", "train": {"model": TINY_MODEL, "epochs": 1}}],
    "losses": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5}],
}


@pytest.fixture
def tiny_train() -> dict:
    return copy.deepcopy(TINY_TRAIN)


@pytest.fixture
def tiny_distill() -> dict:
    return copy.deepcopy(TINY_DISTILL)


@pytest.fixture
def write_spec(tmp_path):
    """Write a spec dict as YAML (output_dir inside tmp_path) and return its path."""

    def write(spec: dict, name: str = "spec.yaml") -> Path:
        spec = {"output_dir": str(tmp_path / "runs"), **spec}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def host():
    from kdzoo.host.loading import load_plugins

    return load_plugins()
