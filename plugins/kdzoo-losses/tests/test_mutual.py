"""Deep mutual learning: the loss against its formula, and students that learn from each
other in one fused pass."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from click.testing import CliRunner

from kdzoo.host.loading import load_plugins
from kdzoo.testing import logits_batch


@pytest.fixture(scope="module")
def host():
    return load_plugins()


def batch(student, peers):
    return logits_batch(student, peers={f"p{i}": p for i, p in enumerate(peers)})


def build(host, **params):
    return host.registry.build("loss", "dml", params)


def test_dml_is_the_mean_over_peers_of_the_batch_mean_kl_from_each_peer(host):
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    peers = [torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 0.0]]), torch.tensor([[0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])]

    def kl(p, q):  # sum_c p log(p / q), written out
        return sum(pc * math.log(pc / qc) for pc, qc in zip(p, q))

    softmax = lambda row: [math.exp(v) / sum(math.exp(u) for u in row) for v in row]  # noqa: E731
    expected = sum(sum(kl(softmax(peer[i].tolist()), softmax(student[i].tolist())) for i in range(2)) / 2 for peer in peers) / 2
    assert float(build(host)(batch(student, peers))) == pytest.approx(expected, rel=1e-5)
    hot = build(host, temperature=4.0)(batch(student, peers))
    softened = [float(torch.nn.functional.kl_div(torch.log_softmax(student / 4, 1), torch.softmax(p / 4, 1), reduction="batchmean")) for p in peers]
    assert float(hot) == pytest.approx(16 * sum(softened) / 2, rel=1e-5)


def test_dml_without_peers_is_an_error(host):
    with pytest.raises(ValueError, match="needs a fused pass"):
        build(host)(batch(torch.zeros(2, 3), []))


def test_two_students_of_one_architecture_learn_from_each_other_in_one_pass(tmp_path):
    from kdzoo import rundir
    from kdzoo.cli import cli

    spec = {"kind": "train", "name": "dml", "epochs": 1, "batch_size": 32, "precision": "fp32", "threads": 1,
            "data": {"name": "synthetic-shapes", "params": {"train_size": 96, "test_size": 48, "num_classes": 4}},
            "model": {"name": "cifar-resnet", "params": {"depth": 8, "width": 4}}, "augmentation": "weak",
            "losses": [{"name": "ce"}, {"name": "dml"}], "matrix": {"init_seed": [1, 2]}, "output_dir": str(tmp_path / "runs")}
    path = tmp_path / "dml.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "[2 of 2 arms, fused in one pass]" in result.output
    arms = sorted((tmp_path / "out" / "arms").iterdir())
    records = [json.loads((arm / rundir.METRICS_FILE).read_text().splitlines()[0]) for arm in arms]
    assert all(r["loss/dml"] > 0 for r in records)  # each saw a peer that disagreed with it
    assert records[0]["loss/ce"] != records[1]["loss/ce"]  # the students started apart
    alone = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "off"), "--quiet", "--fuse", "off"])
    assert alone.exit_code == 2 and "learn from the other students of a fused pass" in alone.output
