"""The published-setting recipes under examples/recipes/: every one validates, and every
built-in distillation method has one (docs/recipes-logit.md, docs/recipes-feature.md).

The recipes read CIFAR-100 from the cache folder by default (``data: {name: cifar100}``)
and are run with ``--set data.params.root=DIR``. A recipe that names a ``root`` is
validated with that root pointed at an empty temporary folder, because the ``cifar100``
dataset's params check at validation time that the folder exists; the data themselves are
read only at run time (where a folder without ``cifar-100-python/`` is reported).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kdzoo.cli import cli
from kdzoo.host.loading import load_plugins
from kdzoo.run.teachers import teacher_dir
from kdzoo.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
RECIPES_DIR = ROOT / "examples" / "recipes"
RECIPES = sorted(RECIPES_DIR.glob("**/*.yaml"))
LOGIT_RECIPES = sorted((RECIPES_DIR / "logit").glob("*.yaml"))
# Plugins each of whose losses needs a recipe named after it in <folder>/: the logit
# and feature losses.
REQUIRED = {"kdzoo-losses": "logit", "kdzoo-feature-losses": "feature"}
NOT_A_METHOD = {"ce"}  # plain cross-entropy: every recipe's label term, not a method of its own


def rel(path: Path) -> str:
    return str(path.relative_to(RECIPES_DIR))


def overrides_for(recipe: Path, data_root: Path) -> list[str]:
    """The override that points a recipe's dataset root at ``data_root`` (when it has one)."""
    data = yaml.safe_load(recipe.read_text()).get("data") or {}
    return [f"data.params.root={data_root}"] if "root" in (data.get("params") or {}) else []


@pytest.fixture(scope="module")
def host():
    return load_plugins()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cifar100-root")


@pytest.fixture(scope="module")
def loaded(host, data_root) -> dict[Path, list]:
    """Recipe -> its validated runs (one per matrix arm)."""
    return {r: [spec for _, spec in load_spec(r, host.registry, overrides_for(r, data_root))[1]] for r in RECIPES}


def test_the_recipes_are_found():
    assert len(LOGIT_RECIPES) >= 17 and set(LOGIT_RECIPES) <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES, ids=rel)
def test_recipe_validates(recipe, data_root):
    args = ["validate", str(recipe)]
    for override in overrides_for(recipe, data_root):
        args += ["--set", override]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "valid, " in result.output


def test_every_builtin_distillation_loss_has_a_recipe(host, loaded):
    for plugin, folder in REQUIRED.items():
        methods = {c.name for c in host.registry.components.values() if c.kind == "loss" and c.plugin == plugin}
        methods -= NOT_A_METHOD
        assert methods, f"no losses registered by {plugin}"
        missing = []
        for method in sorted(methods):
            recipe = RECIPES_DIR / folder / f"{method}.yaml"
            uses = {term.name for spec in loaded.get(recipe, []) for term in spec.losses}
            if method not in uses:
                missing.append(f"{folder}/{method}.yaml (using loss '{method}')")
        assert not missing, "methods without a recipe: " + ", ".join(missing)


@pytest.mark.parametrize("recipe", LOGIT_RECIPES, ids=rel)
def test_each_logit_recipe_names_its_paper_target_and_reference(recipe):
    header = []
    for line in recipe.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    text = "\n".join(header)
    assert header and "Target" in text, "the header must say which published top-1 it targets (or why none)"
    assert "Reference config" in text or "Reference code" in text, "the header must name the reference config"
    assert any(str(year) in text for year in range(2015, 2026)), "the header must cite the paper"


def own_protocol(recipe: Path) -> bool:
    """A recipe whose header has a ``# Protocol: <method>`` line trains its student under that
    method's own published optimisation (DeiT: AdamW + cosine), not the shared schedule."""
    return any(line.startswith("# Protocol:") for line in recipe.read_text().splitlines())


def test_logit_distill_recipes_follow_the_shared_schedule(loaded):
    # 240 epochs, lr x0.1 at epochs 150/180/210, batch 64, SGD momentum 0.9 without Nesterov, wd 5e-4.
    for recipe in LOGIT_RECIPES:
        for spec in loaded[recipe]:
            if spec.kind != "distill" or own_protocol(recipe):
                continue
            assert spec.epochs == 240 and spec.batch_size == 64, rel(recipe)
            assert [round(m * spec.epochs) for m in spec.schedule.milestones] == [150, 180, 210], rel(recipe)
            assert spec.schedule.name == "multistep" and spec.schedule.gamma == 0.1, rel(recipe)
            opt = spec.optimizer
            assert (opt.name, opt.momentum, opt.nesterov, opt.weight_decay) == ("sgd", 0.9, False, 5e-4), rel(recipe)
            for teacher in spec.teachers:
                assert teacher.train is not None and teacher.train.epochs == 240, rel(recipe)


def test_recipes_with_the_same_teacher_share_one_cached_training(loaded):
    # The inline ResNet-32x4 of every recipe (logit and feature) is the same sub-spec, data
    # included: it is trained once, then reused from the teacher cache.
    homes = {}
    for recipe in RECIPES:
        for spec in loaded[recipe]:
            if spec.kind == "distill" and spec.teachers[0].name == "resnet32x4":
                homes.setdefault(teacher_dir(spec.teachers[0].train), []).append(rel(recipe))
    assert len(homes) == 1, f"the ResNet-32x4 teachers differ between recipes: {list(homes.values())}"
    assert len(next(iter(homes.values()))) >= 13  # every logit recipe on ResNet-32x4 -> ResNet-8x4


def test_the_zoo_spec_is_its_generators_output_and_carries_each_recipes_losses():
    import importlib.util

    spec_file = importlib.util.spec_from_file_location("zoo_spec", ROOT / "examples" / "zoo_spec.py")
    zoo_spec = importlib.util.module_from_spec(spec_file)
    spec_file.loader.exec_module(zoo_spec)
    committed = (ROOT / "examples" / "zoo-cifar10.yaml").read_text()
    assert committed == zoo_spec.render(), "stale: python examples/zoo_spec.py > examples/zoo-cifar10.yaml"
    curve = (ROOT / "examples" / "zoo-cifar10-ce-curve.yaml").read_text()
    assert curve == zoo_spec.render(ce_curve=True), "stale: python examples/zoo_spec.py --ce-curve > ..."
    assert zoo_spec.EPOCHS in yaml.safe_load(curve)["matrix"]["epochs"]
    variants = {v["name"]: v for v in yaml.safe_load(committed)["matrix"]["variants"]}
    kd = yaml.safe_load((RECIPES_DIR / "logit" / "kd.yaml").read_text())
    assert variants["kd"]["losses"] == kd["losses"]  # published weights (CE 0.1, KD 0.9, T 4) unchanged
    # epoch counts scale from 240 to the zoo's budget: DKD's 20-epoch warm-up, FT's 30-epoch stage
    assert variants["dkd"]["losses"][1]["params"]["warmup_epochs"] == round(20 * zoo_spec.EPOCHS / 240)
    assert [s["epochs"] for s in variants["ft"]["stages"]] == [round(30 * zoo_spec.EPOCHS / 240), zoo_spec.EPOCHS]
    assert variants["dot"]["optimizer"]["name"] == "dot" and "optimizer" not in variants["kd"]
    assert not set(zoo_spec.LEFT_OUT) & set(variants)
