"""Teacher chains: an inline teacher may itself be distilled (``train: {kind: distill, ...}``),
so a teacher-assistant chain (TAKD) or born-again generations (BAN) are one spec, each
link trained once into the teacher cache, by content."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from kdzoo import rundir
from kdzoo.cli import cli
from tests.conftest import TINY_DATA, TINY_MODEL

BIG = {"name": "cifar-resnet", "params": {"depth": 14, "width": 8}}


def chain_spec(tmp_path, generations: int = 1) -> dict:
    """The student distils from ``ta``, which distils from ``big`` (TAKD); with more
    generations, each link distils from the one before (BAN)."""
    teacher = {"name": "big", "train": {"model": BIG, "epochs": 1}}
    for generation in range(generations):
        teacher = {"name": f"ta{generation}", "train": {"kind": "distill", "student": {"model": TINY_MODEL}, "epochs": 1,
                                                        "teachers": [teacher], "losses": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5}]}}
    return {"kind": "distill", "name": "chain", "epochs": 1, "batch_size": 32, "precision": "fp32", "threads": 1,
            "data": TINY_DATA, "student": {"model": TINY_MODEL}, "teachers": [teacher], "output_dir": str(tmp_path / "runs")}


def run(tmp_path, spec: dict, out: str):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / out), "--quiet"])


def test_a_teacher_assistant_chain_trains_each_link_once_and_distils_through_it(tmp_path):
    result = run(tmp_path, chain_spec(tmp_path), "first")
    assert result.exit_code == 0, result.output
    assert "teacher ta0: distilling cifar-resnet from big" in result.output and "teacher big: training cifar-resnet" in result.output
    summary = json.loads((tmp_path / "first" / rundir.SUMMARY_FILE).read_text())
    assistant = summary["teachers"]["ta0"]["checkpoint"]
    assistant_summary = json.loads((Path(assistant) / rundir.SUMMARY_FILE).read_text())
    assert assistant_summary["kind"] == "distill" and list(assistant_summary["teachers"]) == ["big"]
    assert summary["teachers"]["ta0"]["metrics"]["test/top1/student"] == assistant_summary["final"]["test/top1/student"]
    again = run(tmp_path, chain_spec(tmp_path), "second")  # every link is in the cache now
    assert again.exit_code == 0, again.output
    assert "teacher ta0: reusing" in again.output and "training" not in again.output and "distilling" not in again.output
    second = json.loads((tmp_path / "second" / rundir.SUMMARY_FILE).read_text())
    assert second["final"] == summary["final"]  # the same chain, the same student


def test_born_again_generations_chain_by_content(tmp_path):
    result = run(tmp_path, chain_spec(tmp_path, generations=2), "ban")
    assert result.exit_code == 0, result.output
    cached = sorted(p.name.split("-")[0] for p in rundir.teacher_cache_dir(tmp_path / "runs").iterdir() if p.is_dir())
    assert cached == ["big", "ta0", "ta1"]
    order = [line.split(":")[0] for line in result.output.splitlines() if ": distilling" in line or ": training" in line]
    assert order == ["teacher ta1", "teacher ta0", "teacher big"]  # asked outside-in, trained inside-out (each waits for its own)


def test_a_bad_field_deep_in_a_chain_names_its_path_and_its_own_allowed_keys(tmp_path, write_spec):
    spec = chain_spec(tmp_path)
    spec["teachers"][0]["train"]["teachers"][0]["train"]["epoch"] = 3
    result = CliRunner().invoke(cli, ["validate", str(write_spec(spec))])
    assert result.exit_code == 2
    assert "teachers.0.train.teachers.0.train.epoch: unknown key 'epoch' (did you mean 'epochs'?)" in result.output
    assert "model, name" in result.output and "student" not in result.output.split("allowed:")[1]  # a train spec's keys


def test_the_takd_and_ban_recipes_are_chains_of_the_length_they_say(host):
    from kdzoo.spec import DistillSpec, load_spec

    recipes = Path(__file__).resolve().parent.parent / "examples" / "recipes" / "chains"

    def links(spec) -> list[str]:
        teacher = spec.teachers[0]
        return [teacher.name, *(links(teacher.train) if isinstance(teacher.train, DistillSpec) else [])]

    (_, takd), = load_spec(recipes / "takd.yaml", host.registry)[1]
    assert links(takd) == ["assistant", "resnet110"]
    (_, ban), = load_spec(recipes / "ban.yaml", host.registry)[1]
    assert links(ban) == ["gen2", "gen1", "resnet32x4"]
    assert ban.teachers[0].train.teachers[0].train.data == ban.data  # inherited down the chain
