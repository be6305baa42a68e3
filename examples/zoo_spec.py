"""Write examples/zoo-cifar10.yaml: every method's published setting (its recipe) on one
teacher/student pair and one budget, so each arm carries exactly its recipe's losses and
weights (docs/zoo.md).

    python examples/zoo_spec.py > examples/zoo-cifar10.yaml
    python examples/zoo_spec.py --ce-curve > examples/zoo-cifar10-ce-curve.yaml

Each arm takes from ``examples/recipes/{logit,feature}/<method>.yaml``: its losses (weights
and params, the CE weight included), its ``stages`` and its optimizer when it is the
method (DOT). The budget is the zoo's, not the recipe's: the recipes' epoch counts
(warm-ups, curricula, stage lengths, all written for 240 epochs) are scaled to the zoo's
``EPOCHS``; everything else is the same for every arm. Left out, with the reason in the
spec: the methods a single CNN teacher -> CNN student arm cannot express (DeiT needs a
ViT student, DML trains peers, TAKD/BAN are chains) and ``kd-ensemble`` (``kd`` itself
with one teacher). ``tests/test_recipes.py`` checks the committed spec is this output.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kdzoo.host.loading import get_host  # noqa: E402

RECIPES = Path(__file__).resolve().parent / "recipes"
RECIPE_EPOCHS = 240  # the distillation length every CIFAR-100 recipe is written for
EPOCHS = 40
TRAIN_IMAGES = 2000
LEFT_OUT = {
    "deit": "needs a ViT student (a distillation token)",
    "dml": "online: trains peer students, no teacher",
    "kd-ensemble": "is kd itself with one teacher",
}

HEADER = f"""\
# The method zoo at a budget that ranks methods (docs/zoo.md), written by
# `python examples/zoo_spec.py > examples/zoo-cifar10.yaml` from examples/recipes/: every arm is
# one method at its published setting (the recipe's losses, weights and params, its stages and,
# for DOT, its optimizer), with the recipes' epoch counts scaled from {RECIPE_EPOCHS} to {EPOCHS}.
# Teacher: CIFAR ResNet-20, weak augmentation, 12 epochs on a fixed 10,000-image subset (the
# study's T1w: trained once into the teacher cache). Student: CIFAR ResNet-8 from scratch for
# {EPOCHS} epochs on a fixed {TRAIN_IMAGES:,}-image subset (CE alone is near its plateau there: the
# curve is in docs/zoo.md), RepDistiller's SGD and step schedule, 2 seeds.
# Not here: {"; ".join(f"{name} ({why})" for name, why in LEFT_OUT.items())}; TAKD and BAN are
# teacher chains (examples/recipes/chains/).
#
#   kdzoo run examples/zoo-cifar10.yaml --launcher local --jobs 2 --fuse on    # one job per fused pass
"""


def scaled(epochs: int) -> int:
    return max(1, round(epochs * EPOCHS / RECIPE_EPOCHS)) if epochs > 0 else 0


def scale_epoch_params(term: dict[str, Any], registry: Any) -> dict[str, Any]:
    """``term`` with every ``*_epochs`` param (set, or its default) scaled to the zoo's budget."""
    fields = registry.get("loss", term["name"]).params.model_fields
    params = dict(term.get("params") or {})
    for field, info in fields.items():
        if field.endswith("_epochs") and isinstance(params.get(field, info.default), int):
            params[field] = scaled(params.get(field, info.default))
    return {**term, "params": params} if params else {k: v for k, v in term.items() if k != "params"}


def variant(method: str, recipe: dict[str, Any], registry: Any) -> dict[str, Any]:
    arm: dict[str, Any] = {"name": method, "losses": [scale_epoch_params(t, registry) for t in recipe["losses"]]}
    if recipe.get("stages"):
        stages = [{**stage, "epochs": scaled(stage["epochs"])} for stage in recipe["stages"]]
        arm["stages"] = stages
        arm["epochs"] = sum(stage["epochs"] for stage in stages)
    if recipe["optimizer"]["name"] != "sgd":
        arm["optimizer"] = recipe["optimizer"]
    return arm


def zoo_spec() -> dict[str, Any]:
    registry = get_host().registry
    variants: list[dict[str, Any]] = [{"name": "ce", "losses": [{"name": "ce"}]}]
    for family in ("logit", "feature"):
        for path in sorted((RECIPES / family).glob("*.yaml")):
            if path.stem not in LEFT_OUT:
                variants.append(variant(path.stem, yaml.safe_load(path.read_text()), registry))
    teacher_data = {"name": "cifar10-jpg", "params": {"archive": "../shared/datasets/cifar10-jpg.tar.gz"},
                    "train_limit": 10000, "test_limit": 5000}
    return {
        "kind": "distill",
        "name": "zoo-cifar10",
        "seed": 0,
        "epochs": EPOCHS,
        "batch_size": 64,
        "threads": 1,
        "data": {**teacher_data, "train_limit": TRAIN_IMAGES},
        "augmentation": "weak",
        "student": {"model": {"name": "cifar-resnet", "params": {"depth": 8}}},
        "teachers": [{"name": "T1w", "train": {
            "model": {"name": "cifar-resnet", "params": {"depth": 20}}, "data": teacher_data,
            "epochs": 12, "batch_size": 128, "augmentation": "weak", "seed": 1}}],
        "losses": [{"name": "ce"}],
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0005},
        "schedule": {"name": "multistep", "milestones": [0.625, 0.75, 0.875], "gamma": 0.1},
        "metrics": ["accuracy", "fidelity"],
        "eval": {"splits": ["train", "test"], "every": EPOCHS, "train_limit": TRAIN_IMAGES},
        "matrix": {"variants": variants, "seed": [0, 1]},
    }


CURVE_EPOCHS = [EPOCHS // 8, EPOCHS // 4, EPOCHS // 2, EPOCHS, 2 * EPOCHS, 4 * EPOCHS]  # the zoo budget, halved and doubled

CURVE_HEADER = f"""\
# CE alone at growing budgets, the zoo's student, data, optimizer and schedule otherwise
# (examples/zoo-cifar10.yaml): how close {EPOCHS} epochs are to CE's plateau (docs/zoo.md). Written by
# `python examples/zoo_spec.py --ce-curve > examples/zoo-cifar10-ce-curve.yaml`.
#
#   kdzoo run examples/zoo-cifar10-ce-curve.yaml --launcher local --jobs 2
"""


def ce_curve_spec() -> dict[str, Any]:
    zoo = zoo_spec()
    shared = ("seed", "batch_size", "threads", "data", "augmentation", "optimizer", "schedule")
    return {"kind": "train", "name": "zoo-cifar10-ce-curve", **{k: zoo[k] for k in shared},
            "epochs": EPOCHS, "model": zoo["student"]["model"], "losses": [{"name": "ce"}], "metrics": ["accuracy"],
            "eval": {**zoo["eval"], "every": max(CURVE_EPOCHS)},
            "matrix": {"epochs": CURVE_EPOCHS, "seed": zoo["matrix"]["seed"]}}


def render(ce_curve: bool = False) -> str:
    if ce_curve:
        return CURVE_HEADER + yaml.safe_dump(ce_curve_spec(), sort_keys=False, width=120)
    return HEADER + yaml.safe_dump(zoo_spec(), sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(render(ce_curve="--ce-curve" in sys.argv[1:]))
