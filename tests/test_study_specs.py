"""The study specs validate and describe the regime docs/study.md states: students on a
subset of the teachers' images, three teacher strengths, 1-3 teachers each, 3 seeds, every
arm sharing data, budget and seeds; the CE-only baselines match their students."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from kdzoo.host.loading import load_plugins
from kdzoo.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CIFAR10_ARCHIVE = ROOT.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"


@pytest.fixture(scope="module")
def registry():
    return load_plugins().registry


@pytest.fixture()
def fake_torch_hub(tmp_path, monkeypatch):
    """The ResNet-50 ImageNet weights the CIFAR-100 spec names, as a cached file (validation
    checks the cache; nothing is loaded)."""
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "resnet50-11ad3fa6.pth").write_bytes(b"not read at validation")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def runs(registry, name: str):
    return [spec for _, spec in load_spec(EXAMPLES / name, registry)[1]]


def check_grid(arms, baseline, strengths: int):
    assert len(arms) == strengths * 3 * 3  # strengths x teacher counts x seeds
    counts = Counter((len(a.teachers), a.teachers[0].train.augmentation.model_dump_json()) for a in arms)
    assert len(counts) == strengths * 3 and set(counts.values()) == {3}
    assert {a.seed for a in arms} == {0, 1, 2}
    for arm in arms:
        # one strength per arm; teacher T<i> has the fixed seed i whatever the student's seed
        assert len({t.train.augmentation.model_dump_json() for t in arm.teachers}) == 1
        assert [t.train.seed for t in arm.teachers] == list(range(1, len(arm.teachers) + 1))
        shared = ("epochs", "batch_size", "data", "augmentation", "optimizer", "schedule", "eval")
        assert {f: getattr(arm, f) for f in shared} == {f: getattr(arms[0], f) for f in shared}
    student = arms[0]
    for base in baseline:  # the CE-only baseline: the same student and budget on labels alone
        assert base.model == student.student.model and base.data == student.data and base.epochs == student.epochs
        assert (base.optimizer, base.schedule, base.augmentation) == (student.optimizer, student.schedule, student.augmentation)
    assert sorted(b.seed for b in baseline) == [0, 1, 2]
    return student


@pytest.mark.skipif(not CIFAR10_ARCHIVE.is_file(), reason="needs ../shared/datasets/cifar10-jpg.tar.gz beside the repository")
def test_the_cifar10_study_is_the_regime_docs_study_md_states(registry, monkeypatch):
    monkeypatch.chdir(ROOT)  # the specs name the archive relative to the repository root
    student = check_grid(runs(registry, "study-cifar10.yaml"), runs(registry, "study-cifar10-ce.yaml"), strengths=3)
    teacher = student.teachers[0].train
    # students see 2,000 images for 40 epochs; teachers 10,000 (a superset: the same fixed permutation)
    assert (student.data.train_limit, student.epochs) == (2000, 40) and teacher.data.train_limit == 10000
    assert student.data.test_limit == teacher.data.test_limit == 5000


def test_the_cifar100_study_validates_at_paper_scale(registry, fake_torch_hub):
    student = check_grid(runs(registry, "study-cifar100.yaml"), runs(registry, "study-cifar100-ce.yaml"), strengths=3)
    assert student.data.name == "cifar100" and student.epochs == 200
    assert student.teachers[0].train.model.params["pretrained"] == "IMAGENET1K_V2"
