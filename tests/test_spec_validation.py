"""Every malformed spec is refused before any work, naming the field, with exit code 2."""

from __future__ import annotations

import copy

import pytest
from click.testing import CliRunner

from kdzoo.cli import cli


def _set(spec: dict, path: str, value) -> dict:
    spec = copy.deepcopy(spec)
    node = spec
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    elif value is DELETE:
        del node[last]
    else:
        node[last] = value
    return spec


DELETE = object()

# (description, path to change, new value, text the message must contain)
MALFORMED = [
    ("unknown top-level key", "optimzer", {}, "optimzer: unknown key 'optimzer' (did you mean 'optimizer'?)"),
    ("negative epochs", "epochs", -1, "epochs: Input should be greater than or equal to 1 (got -1)"),
    ("epochs not a number", "epochs", "many", "epochs: Input should be a valid integer"),
    ("zero batch size", "batch_size", 0, "batch_size:"),
    ("negative seed", "seed", -3, "seed:"),
    ("unknown optimizer", "optimizer", {"name": "adam"}, "optimizer.name: Input should be 'sgd', 'adamw' or 'dot'"),
    ("negative lr", "optimizer", {"lr": -0.1}, "optimizer.lr: Input should be greater than 0"),
    ("momentum of 1", "optimizer", {"momentum": 1.0}, "optimizer.momentum:"),
    ("unknown schedule", "schedule", {"name": "poly"}, "schedule.name:"),
    ("milestones not fractions", "schedule", {"name": "multistep", "milestones": [30, 60]}, "schedule.milestones:"),
    ("bad precision", "precision", "fp8", "precision: Input should be 'auto', 'fp32' or 'bf16'"),
    ("bad device", "device", "tpu", "device: String should match pattern"),
    ("misspelt loss", "losses.1", {"name": "kdd"}, "losses.1.name: unknown loss 'kdd' (did you mean 'kd'?)"),
    ("bad loss params", "losses.1", {"name": "kd", "params": {"temperature": -1}}, "losses.1.params: temperature:"),
    ("unknown loss param", "losses.1", {"name": "kd", "params": {"temprature": 2}}, "losses.1.params"),
    ("negative loss weight", "losses.0", {"name": "ce", "weight": -1}, "losses.0.weight:"),
    ("empty loss list", "losses", [], "losses: List should have at least 1 item"),
    ("misspelt model", "student.model", {"name": "cifar-resnt"}, "student.model.name: unknown model 'cifar-resnt' (did you mean 'cifar-resnet'?)"),
    ("bad model params", "student.model", {"name": "cifar-resnet", "params": {"depth": 19}}, "student.model.params: depth:"),
    ("unknown dataset", "data", {"name": "imagenet-21k"}, "data.name: unknown dataset 'imagenet-21k'"),
    ("bad dataset params", "data", {"name": "synthetic-shapes", "params": {"train_size": -5}}, "data.params: train_size:"),
    ("unknown augmentation", "augmentation", "strnog", "augmentation.name: unknown augmentation 'strnog' (did you mean 'strong'?)"),
    ("unknown metric", "metrics", ["accuracy", "fidelty"], "metrics.1.name: unknown metric 'fidelty' (did you mean 'fidelity'?)"),
    ("no teachers", "teachers", [], "teachers: List should have at least 1 item"),
    ("teacher with two sources", "teachers.0", {"name": "t1", "checkpoint": "x.safetensors", "train": {"model": "cifar-resnet"}}, "teachers.0: Value error" ),
    ("teacher with no source", "teachers.0", {"name": "t1"}, "teachers.0:"),
    ("duplicate teacher names", "teachers", [{"name": "t1", "train": {"model": "cifar-resnet"}}, {"name": "t1", "train": {"model": "cifar-resnet"}}], "teachers: teacher names must be unique"),
    ("teacher named like a metric role", "teachers.0.name", "1st", "teachers.0.name: String should match pattern"),
    ("unknown key in an inline teacher", "teachers.0.train", {"model": "cifar-resnet", "epoch": 3}, "teachers.0.train.epoch: unknown key 'epoch' (did you mean 'epochs'?)"),
    ("missing student", "student", DELETE, "student: required field is missing"),
    ("bad eval split", "eval", {"splits": ["validation"]}, "eval.splits.0:"),
    ("bad teacher_views", "teacher_views", "mine", "teacher_views:"),
    ("empty matrix values", "matrix", {"seed": []}, "matrix: matrix entry 'seed' has no values"),
    ("bad value inside a matrix arm", "matrix", {"epochs": [1, -2]}, "[matrix arm epochs-2] epochs:"),
]


@pytest.mark.parametrize("what, path, value, expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_spec_is_refused_with_field_path(tiny_distill, write_spec, what, path, value, expected):
    if expected.startswith("teachers.0: Value error"):
        expected = "teachers.0: Value error, " if False else "teachers.0: a teacher needs exactly one of 'checkpoint' or 'train'"
    spec_path = write_spec(_set(tiny_distill, path, value))
    result = CliRunner().invoke(cli, ["validate", str(spec_path)])
    assert result.exit_code == 2, result.output
    assert expected in result.output, result.output
    assert "Traceback" not in result.output


def test_unknown_run_kind(write_spec, tiny_train):
    result = CliRunner().invoke(cli, ["validate", str(write_spec({**tiny_train, "kind": "trian"}))])
    assert result.exit_code == 2
    assert "kind: unknown run kind 'trian' (did you mean 'train'?)" in result.output


@pytest.mark.parametrize(
    "content, expected",
    [("epochs: [1,\n", "cannot parse YAML"), ("- just\n- a list\n", "a spec is a mapping"), ("", "a spec is a mapping")],
)
def test_unreadable_spec_file(tmp_path, content, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2 and expected in result.output


def test_missing_spec_file(tmp_path):
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "spec file not found" in result.output


def test_all_problems_reported_at_once(tiny_distill, write_spec):
    spec = _set(_set(tiny_distill, "epochs", 0), "optimizer", {"name": "adam"})
    result = CliRunner().invoke(cli, ["validate", str(write_spec(spec))])
    assert "epochs:" in result.output and "optimizer.name:" in result.output


def test_set_overrides_are_validated(tiny_distill, write_spec):
    path = write_spec(tiny_distill)
    ok = CliRunner().invoke(cli, ["validate", str(path), "--set", "epochs=3", "--set", "losses.1.params.temperature=2"])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(cli, ["validate", str(path), "--set", "losses.1.params.temperature=0"])
    assert bad.exit_code == 2 and "losses.1.params: temperature:" in bad.output
    malformed = CliRunner().invoke(cli, ["validate", str(path), "--set", "epochs"])
    assert malformed.exit_code == 2 and "key.path=value" in malformed.output


def test_resolved_params_include_defaults(host, tiny_distill):
    from kdzoo.spec import validate_spec

    spec = validate_spec(tiny_distill, host.registry)
    assert spec.losses[1].params["temperature"] == 4.0  # the kd plugin's default, recorded
    teacher = spec.teachers[0].train
    assert teacher.data == spec.data and teacher.seed == 1 and teacher.batch_size == 32


def test_matrix_expands_to_named_arms(host, tiny_distill, write_spec):
    from kdzoo.spec import load_spec

    spec = {**tiny_distill, "matrix": {"augmentation": ["weak", "strong"], "seed": [0, 1]}}
    _, runs = load_spec(write_spec(spec), host.registry)
    assert [name for name, _ in runs] == ["weak_seed0", "weak_seed1", "strong_seed0", "strong_seed1"]
    assert {(r.augmentation.name, r.seed) for _, r in runs} == {("weak", 0), ("weak", 1), ("strong", 0), ("strong", 1)}
    # a run's seed moves its inline teachers' seeds
    assert runs[1][1].teachers[0].train.seed == 1001


def test_json_specs_are_read_like_yaml(tiny_distill, tmp_path):
    import json

    path = tmp_path / "spec.json"
    path.write_text(json.dumps(tiny_distill))
    assert CliRunner().invoke(cli, ["validate", str(path)]).exit_code == 0
    path.write_text(json.dumps({**tiny_distill, "epochs": 0}))
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2 and "epochs:" in result.output


def test_docs_spec_reference_is_current():
    from pathlib import Path

    from kdzoo.spec.doc import render

    committed = (Path(__file__).parent.parent / "docs" / "spec.md").read_text()
    assert committed == render(), "docs/spec.md is stale: python -m kdzoo.spec.doc > docs/spec.md"


def test_matrix_variants_set_several_fields_in_one_arm(host, tiny_distill, write_spec):
    from kdzoo.spec import load_spec

    variants = [
        {"name": "plain"},  # refused below: a variant must set something
    ]
    staged = {"name": "slow", "epochs": 2, "optimizer.lr": 0.01}
    spec = {**tiny_distill, "matrix": {"variants": [{"epochs": 1}, staged], "seed": [0, 1]}}
    _, runs = load_spec(write_spec(spec), host.registry)
    assert [name for name, _ in runs] == ["epochs1_seed0", "epochs1_seed1", "slow_seed0", "slow_seed1"]
    assert [(r.epochs, r.optimizer.lr, r.seed) for _, r in runs[2:]] == [(2, 0.01, 0), (2, 0.01, 1)]
    assert runs[0][1].optimizer.lr == tiny_distill.get("optimizer", {}).get("lr", runs[0][1].optimizer.lr) != 0.01
    result = CliRunner().invoke(cli, ["validate", str(write_spec({**tiny_distill, "matrix": {"variants": variants}}))])
    assert result.exit_code == 2 and "matrix.variants: each value must be a mapping" in result.output


def test_a_mistake_shared_by_every_arm_is_reported_once(tiny_distill, write_spec):
    spec = {**tiny_distill, "batch_size": 0, "matrix": {"seed": [0, 1, 2, 3, 4], "epochs": [1, -1]}}
    result = CliRunner().invoke(cli, ["validate", str(write_spec(spec))])
    assert result.exit_code == 2
    assert result.output.count("batch_size") == 1 and "[all 10 matrix arms] batch_size" in result.output
    assert "[matrix arms seed0_epochs-1, seed1_epochs-1, seed2_epochs-1 and 2 more] epochs" in result.output
