"""Shared fixtures: tiny specs that train in about a second on a CPU core."""

from __future__ import annotations

import copy
import os
import sys
import textwrap
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


# ----------------------------------------------------------------------------- throwaway plugins
class ThrowawaySite:
    """Throwaway third-party plugin packages, installed the way pip installs them.

    ``site.install("aaa-evil", source)`` writes a module and a ``.dist-info`` folder
    (METADATA + entry_points.txt) into a folder on ``sys.path``: importlib.metadata then
    finds a real distribution with an entry point in the ``kdzoo`` group, exactly like a
    package that ``pip install`` put into site-packages, beside the real built-ins.
    Subprocesses see it through ``site.env()`` (PYTHONPATH).
    """

    def __init__(self, path: Path):
        self.path = path

    def install(self, dist_name: str, source: str, module: str | None = None) -> str:
        from kdzoo.host.loading import reset_host

        module = module or dist_name.replace("-", "_")
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / f"{module}.py").write_text(textwrap.dedent(source))
        info = self.path / f"{module}-0.1.0.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 0.1.0\n")
        (info / "entry_points.txt").write_text(f"[kdzoo]\n{dist_name} = {module}\n")
        if str(self.path) not in sys.path:
            sys.path.insert(0, str(self.path))
        sys.modules.pop(module, None)
        reset_host()
        return module

    def remove_all(self) -> None:
        from kdzoo.host.loading import reset_host

        if str(self.path) in sys.path:
            sys.path.remove(str(self.path))
        for path in self.path.glob("*.py"):
            sys.modules.pop(path.stem, None)
        reset_host()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.path), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.pop("KDZOO_DEBUG", None)
        return env


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A site-packages folder for throwaway plugin packages, removed after the test."""
    monkeypatch.delenv("KDZOO_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("KDZOO_DEBUG", raising=False)
    throwaway = ThrowawaySite(tmp_path / "site-packages")
    yield throwaway
    throwaway.remove_all()



@pytest.fixture
def interrupt_in_epoch(monkeypatch):
    """``restore = interrupt_in_epoch(n)``: every training pass raises KeyboardInterrupt as
    its epoch ``n`` (0-based) begins, as a Ctrl-C there would, until ``restore()``."""
    from kdzoo.run import trainer

    original = trainer.TrainingPass.train_epoch

    def interrupt(at: int):
        def train_epoch(self, epoch, arms, progress):
            if epoch == at:
                raise KeyboardInterrupt
            return original(self, epoch, arms, progress)

        monkeypatch.setattr(trainer.TrainingPass, "train_epoch", train_epoch)
        return lambda: monkeypatch.setattr(trainer.TrainingPass, "train_epoch", original)

    return interrupt
