"""`kdzoo affinity` on a model whose accuracy is known exactly.

A test plugin adds a dataset of flat images whose colour is the class, a model that reads
the colour (so it is exact on clean images and on any policy that keeps flat images flat)
and an augmentation that blacks every image out (so the model answers class 0 everywhere
and its accuracy is the share of class 0: 1/4 with four balanced classes).
"""

from __future__ import annotations

import csv
import types

import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn

import kdzoo.host.loading
from kdzoo import hookimpl
from kdzoo.study.affinity import parse_policies, split_policy_entries
from kdzoo.api import ImageData, Network
from kdzoo.cli import cli
from kdzoo.errors import KdzooError

NUM_CLASSES = 4
TEST_PER_CLASS = 3


def flat_colours(params, seed, cache_dir) -> ImageData:
    """Class k: every pixel red = 255 (k + 0.5) / K, green = blue = 0."""

    def split(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
        images = torch.zeros(len(labels), 3, 8, 8, dtype=torch.uint8)
        images[:, 0] = torch.round(255 * (labels.float() + 0.5) / NUM_CLASSES).to(torch.uint8)[:, None, None]
        return images, labels

    return ImageData(*split(2), *split(TEST_PER_CLASS), classes=[f"c{k}" for k in range(NUM_CLASSES)])


class ColourReader(nn.Module):
    """Logits: minus the squared distance of the mean red value to each class colour."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.register_buffer("centres", (torch.arange(num_classes) + 0.5) / num_classes)
        self.sharpness = nn.Parameter(torch.tensor(100.0))  # something to train; stays positive

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        red = images[:, 0].mean(dim=(1, 2))
        return -self.sharpness * (red[:, None] - self.centres) ** 2


def colour_reader(params, num_classes, image_size) -> Network:
    return Network(ColourReader(num_classes), num_classes=num_classes, mean=(0, 0, 0), std=(1, 1, 1))


def blackout(params):
    return lambda images, generator: torch.zeros_like(images)


def make_plugin() -> types.ModuleType:
    plugin = types.ModuleType("affinity_test_plugin")

    @hookimpl
    def register_datasets(register):
        register("flat-colours", flat_colours)

    @hookimpl
    def register_models(register):
        register("colour-reader", colour_reader)

    @hookimpl
    def register_augmentations(register):
        register("blackout", blackout)

    plugin.register_datasets, plugin.register_models, plugin.register_augmentations = register_datasets, register_models, register_augmentations
    return plugin


@pytest.fixture(scope="module")
def plugin_host():
    return kdzoo.host.loading.load_plugins(extra_modules=[make_plugin()])


@pytest.fixture
def cli_host(plugin_host, monkeypatch):
    monkeypatch.setattr(kdzoo.host.loading, "_HOSTS", {(): plugin_host})  # what `kdzoo` commands load
    return plugin_host


@pytest.fixture
def spec_path(tmp_path):
    spec = {
        "kind": "train",
        "name": "reader",
        "epochs": 1,
        "batch_size": 4,
        "precision": "fp32",
        "threads": 1,
        "data": "flat-colours",
        "model": "colour-reader",
        "augmentation": "blackout",  # forced to 'none' by affinity
        "optimizer": {"lr": 0.000001},
        "output_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / "reader.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def read_rows(path) -> dict[str, dict[str, str]]:
    return {row["policy"]: row for row in csv.DictReader(path.open())}


def test_affinity_of_known_policies_from_a_spec_and_from_its_checkpoint(cli_host, spec_path, tmp_path):
    out = tmp_path / "affinity"
    result = CliRunner().invoke(cli, ["affinity", str(spec_path), "--policies", "none,weak", "--policies", "blackout", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "training colour-reader without augmentation" in result.output
    assert yaml.safe_load((out / "model" / "spec.yaml").read_text())["augmentation"]["name"] == "none"
    rows = read_rows(out / "affinity.csv")
    assert list(rows) == ["none", "weak", "blackout"]
    assert all(float(row["clean_top1"]) == 1.0 for row in rows.values())
    assert float(rows["none"]["affinity"]) == 1.0  # the identity
    assert float(rows["weak"]["affinity"]) == 1.0  # crop with reflect padding and flips keep flat images flat
    assert float(rows["blackout"]["augmented_top1"]) == 1 / NUM_CLASSES  # always class 0: chance level
    assert float(rows["blackout"]["affinity"]) == 1 / NUM_CLASSES
    assert "| blackout | 1.0000      | 0.2500          | 0.2500   |" in result.output
    assert (out / "affinity.md").read_text().count("| blackout") == 1

    # The checkpoint it trained gives the same figures, written beside it by default.
    again = CliRunner().invoke(cli, ["affinity", str(out / "model"), "--policies", "blackout"])
    assert again.exit_code == 0, again.output
    assert float(read_rows(out / "model" / "affinity" / "affinity.csv")["blackout"]["affinity"]) == 1 / NUM_CLASSES

    # Rerunning the spec reuses the trained model.
    third = CliRunner().invoke(cli, ["affinity", str(spec_path), "--policies", "none", "--out", str(out)])
    assert third.exit_code == 0 and "reusing the model trained without augmentation" in third.output


def test_default_policies_are_every_registered_augmentation(plugin_host):
    names = [p.ref.name for p in parse_policies([], plugin_host.registry)]
    assert names == plugin_host.registry.names("augmentation") and "blackout" in names


def test_policies_carry_params(plugin_host):
    assert split_policy_entries(["none,randaugment:magnitude=5,num_ops=1", "strong"]) == ["none", "randaugment:magnitude=5,num_ops=1", "strong"]
    sweep = parse_policies(["randaugment:magnitude=5", "randaugment:magnitude=15:num_ops=1"], plugin_host.registry)
    assert [p.label for p in sweep] == ["randaugment:magnitude=5", "randaugment:magnitude=15:num_ops=1"]
    assert [(p.ref.params["magnitude"], p.ref.params["num_ops"]) for p in sweep] == [(5, 2), (15, 1)]
    with pytest.raises(KdzooError, match="magnitude"):
        parse_policies(["randaugment:magnitude=99"], plugin_host.registry)
    with pytest.raises(KdzooError, match="unknown augmentation 'stronk'"):
        parse_policies(["stronk"], plugin_host.registry)


def test_affinity_refuses_a_distill_spec(cli_host, tmp_path):
    from kdzoo.testing import tiny_spec

    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(tiny_spec(output_dir=str(tmp_path))))
    result = CliRunner().invoke(cli, ["affinity", str(path), "--policies", "none"])
    assert result.exit_code == 2 and "needs a train spec" in result.output
