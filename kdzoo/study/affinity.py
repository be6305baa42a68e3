"""Augmentation affinity (Gontijo-Lopes et al. 2020): how far a policy moves images off
the clean distribution, measured by a model that never saw augmented images.

``affinity = top-1 on augmented test images / top-1 on clean test images`` for a model
trained with augmentation ``none``. 1.0 means the policy keeps images where the model
already works; a ratio near chance accuracy / clean accuracy means it destroys them.
Every policy is applied with the same fixed seed, so two runs give the same table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kdzoo import rundir
from kdzoo.api.keys import TRAIN_ROLE, role_key
from kdzoo.host.build import build_augmentation, build_metric
from kdzoo.spec.defaults import DEFAULTS
from kdzoo.errors import KdzooError, SpecError
from kdzoo.host.loading import PluginHost
from kdzoo.run.checkpoint import write_csv, write_text
from kdzoo.spec import AugmentationRef, TrainSpec, describe_error, load_spec, validate_spec
from kdzoo.tables import markdown_table

Log = Callable[[str], None]
ROLE = TRAIN_ROLE
CLEAN_POLICY = DEFAULTS["clean_augmentation"]


@dataclass(frozen=True)
class Policy:
    label: str  # as the user wrote it, e.g. "randaugment:magnitude=5"
    ref: AugmentationRef


@dataclass(frozen=True)
class PolicyAffinity:
    policy: str
    clean_top1: float
    augmented_top1: float

    @property
    def affinity(self) -> float | None:
        return self.augmented_top1 / self.clean_top1 if self.clean_top1 > 0 else None


# ----------------------------------------------------------------------------- policies
def split_policy_entries(texts: list[str]) -> list[str]:
    """``["none,randaugment:magnitude=5,num_ops=1"]`` -> ``["none", "randaugment:magnitude=5,num_ops=1"]``.

    A comma-separated piece with ``=`` but no ``:`` continues the previous entry's
    params (a policy name never holds ``=``), so params can be listed with commas too.
    """
    entries: list[str] = []
    for text in texts:
        for piece in (p.strip() for p in text.split(",")):
            if not piece:
                continue
            if "=" in piece and ":" not in piece and entries:
                entries[-1] += "," + piece
            else:
                entries.append(piece)
    return entries


def parse_policy(entry: str, registry) -> Policy:
    """``name`` or ``name:key=value[,key=value...]`` (values parsed as YAML) -> a validated policy."""
    name, _, raw_params = entry.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in raw_params.replace(":", ",").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise KdzooError(f"--policies: '{entry}': expected name:key=value, got '{item}'")
        params[key.strip()] = yaml.safe_load(value)
    try:
        ref = AugmentationRef.model_validate({"name": name.strip(), "params": params}, context={"registry": registry})
    except ValidationError as exc:
        raise KdzooError(f"--policies: '{entry}': " + "; ".join(describe_error(err, prefix="") for err in exc.errors())) from None
    return Policy(entry, ref)


def parse_policies(texts: list[str], registry) -> list[Policy]:
    """The policies to measure: those given, or every registered augmentation."""
    entries = split_policy_entries(texts) or registry.names("augmentation")
    return [parse_policy(entry, registry) for entry in entries]


# ----------------------------------------------------------------------------- the model
def is_checkpoint(path: Path) -> bool:
    return rundir.is_checkpoint_file(path)


def clean_train_spec(path: Path, registry) -> TrainSpec:
    """The train spec at ``path`` with its augmentation forced to ``none``."""
    data, runs = load_spec(path, registry)
    if len(runs) != 1:
        raise KdzooError(f"{path}: affinity trains one model; this spec has a matrix of {len(runs)} runs")
    spec = runs[0][1]
    if not isinstance(spec, TrainSpec):
        raise KdzooError(f"{path}: affinity needs a train spec (one model trained alone), not a {spec.kind} spec")
    resolved = spec.model_dump(mode="json")
    resolved["augmentation"] = {"name": CLEAN_POLICY, "params": {}}
    return validate_spec(resolved, registry, str(path))


def clean_model(source: Path, host: PluginHost, out_dir: Path | None, log: Log, progress: bool | None) -> tuple[Path, TrainSpec, Path]:
    """(checkpoint to measure, the spec it was trained from, output directory).

    A checkpoint ``source`` is measured as it is (output default: ``<its dir>/affinity``);
    a train spec is trained without augmentation into ``<out>/model`` (output default:
    ``OUTPUT_DIR/<name>-affinity``), or reused from there when it already finished.
    """
    from kdzoo.run.runner import run_single

    if is_checkpoint(source):
        weights, manifest = rundir.resolve_checkpoint(source)
        try:
            spec = validate_spec(manifest["spec"], host.registry, str(weights))
        except (KeyError, SpecError) as exc:
            raise KdzooError(f"{weights}: its manifest holds no usable train spec ({exc})") from None
        if not isinstance(spec, TrainSpec):
            raise KdzooError(f"{weights} is a distilled student; affinity needs a model trained alone without augmentation")
        if spec.augmentation.name != CLEAN_POLICY:
            log(f"warning: {weights} was trained with '{spec.augmentation.name}' augmentation; "
                "affinity is defined for a model trained without augmentation")
        return weights, spec, out_dir or weights.parent / "affinity"
    spec = clean_train_spec(source, host.registry)
    out_dir = out_dir or Path(spec.output_dir) / f"{spec.name or 'run'}-affinity"
    model_dir = out_dir / "model"
    if rundir.is_finished(model_dir):
        log(f"reusing the model trained without augmentation in {model_dir}")
    else:
        log(f"training {spec.model.name} without augmentation -> {model_dir}")
        run_single(spec, host, model_dir, resume=rundir.has_state(model_dir), log=log, progress=progress)
    return model_dir, spec, out_dir


# ----------------------------------------------------------------------------- measuring
def measure_affinity(checkpoint: Path, spec: TrainSpec, host: PluginHost, policies: list[Policy], seed: int = 0) -> list[PolicyAffinity]:
    """Clean and augmented test top-1 of the checkpoint for each policy (same seed for each)."""
    import torch

    from kdzoo.run.data import load_data
    from kdzoo.run.evaluator import Evaluator
    from kdzoo.run.runtime import select_runtime, wants_channels_last
    from kdzoo.run.teachers import load_teacher

    registry = host.registry
    runtime = select_runtime(spec)
    data = load_data(spec.data, registry)
    network, _ = load_teacher(host, checkpoint, data)
    channels_last = wants_channels_last(spec, network)
    network.to(runtime.device).eval()
    if channels_last:
        network.to(memory_format=torch.channels_last)
    evaluator = Evaluator(runtime, {ROLE: network}, {ROLE: channels_last}, (), ROLE)

    metric_ref = DEFAULTS["affinity_metric"]

    def top1(augmentation=None) -> float:
        accuracy = (registry.get("metric", metric_ref["name"]), build_metric(registry, metric_ref["name"], metric_ref["params"]))
        found = evaluator.run("test", data.test_images, data.test_labels, None, [accuracy], augmentation, aug_seed=seed)
        return float(found[role_key("top1", ROLE)])

    clean = top1()
    return [
        PolicyAffinity(p.label, clean, top1(build_augmentation(registry, p.ref.name, p.ref.params)))
        for p in policies
    ]


# ----------------------------------------------------------------------------- output
HEADERS = ["policy", "clean top-1", "augmented top-1", "affinity"]


def affinity_table(rows: list[PolicyAffinity]) -> str:
    return markdown_table(HEADERS, [[r.policy, r.clean_top1, r.augmented_top1, r.affinity] for r in rows])


def write_affinity(rows: list[PolicyAffinity], out_dir: Path, source: Path, seed: int) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "affinity.csv"
    write_csv(csv_path, [["policy", "clean_top1", "augmented_top1", "affinity"]] + [
        [r.policy, repr(r.clean_top1), repr(r.augmented_top1), "" if r.affinity is None else repr(r.affinity)] for r in rows
    ])
    md_path = out_dir / "affinity.md"
    write_text(md_path, 
        f"# Augmentation affinity: {source}\n\n"
        "Test top-1 of a model trained without augmentation, on clean test images and on test "
        f"images through each policy (augmentation seed {seed}); affinity = augmented / clean.\n\n"
        f"{affinity_table(rows)}\n"
    )
    return [csv_path, md_path]
