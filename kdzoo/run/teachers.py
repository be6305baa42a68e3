"""Teachers: loaded from kdzoo checkpoints, or trained inline once and cached by content."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdzoo import __version__, rundir
from kdzoo.api import ImageData, Network
from kdzoo.errors import KdzooError
from kdzoo.host import PluginHost
from kdzoo.host.build import build_augmentation, build_model
from kdzoo.run.checkpoint import file_sha256, load_tensors, verify_checkpoint
from kdzoo.run.heads import with_student_head
from kdzoo.run.locking import exclusive_lock
from kdzoo.spec import DistillSpec, TrainSpec
from kdzoo.spec.models import check_checkpoint_manifest

Log = Callable[[str], None]


@dataclass
class Teacher:
    role: str
    network: Network
    augmentation: Any = None  # own view (teacher_views: own)
    source: str = ""  # checkpoint path
    metrics: dict[str, Any] = field(default_factory=dict)  # from its manifest


def load_teacher(host: PluginHost, path: Path, data: ImageData) -> tuple[Network, dict[str, Any]]:
    """Rebuild a model from a kdzoo checkpoint (predicting through the head its manifest
    names, if a loss supplied one: :mod:`kdzoo.run.heads`) and check that it fits ``data``."""
    weights, manifest, ref = check_checkpoint_manifest(path, host.registry)
    if manifest["num_classes"] != data.num_classes:
        raise KdzooError(
            f"checkpoint {weights} predicts {manifest['num_classes']} classes but dataset "
            f"'{data.name}' has {data.num_classes}"
        )
    verify_checkpoint(weights, manifest)
    network = build_model(host.registry, ref.name, ref.params, num_classes=data.num_classes, image_size=data.image_size)
    prefix = rundir.BODY_PREFIX
    tensors = load_tensors(weights)
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    expected = network.body.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise KdzooError(f"checkpoint {weights} does not match model '{ref.name}' {ref.params}: {detail}")
    network.body.load_state_dict(state)
    # A student that predicts through a loss's head (SimKD) is loaded predicting as it was evaluated.
    return with_student_head(host.registry, network, manifest, tensors, weights), manifest


def teacher_dir(spec: TrainSpec | DistillSpec) -> Path:
    """Content-addressed home of an inline teacher: the same sub-spec is trained once.

    The key is the normalised spec (every default filled in, see ``validate_spec``), so a
    resumed run finds the teacher it trained before."""
    content = spec.model_dump(mode="json", exclude={"name", "output_dir", "plugins"})
    if not content.get("sync_bn"):  # a later field: teachers cached before it keep their key
        content.pop("sync_bn", None)
    # Plugin files count by content, not path: an edited prototype trains a new teacher.
    plugin_files = [file_sha256(Path(p)) if Path(p).is_file() else p for p in spec.plugins]
    key = {"spec": content, "kdzoo": __version__, "plugin_files": plugin_files}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return rundir.teacher_cache_dir(spec.output_dir) / f"{spec.name or 'teacher'}-{digest}"


def cached_teacher(name: str, spec: TrainSpec | DistillSpec, path: Path, train: Callable[[Any, Path], Any], log: Log) -> None:
    """Make ``path`` a finished teacher: reuse it, or train it and publish it.

    Under a file lock, so a second process that needs the same teacher waits for the
    first and reuses its result. Training happens in ``<path>.partial`` (resumed there
    after a crash) and is published by one rename once finished: the cache never holds
    a half-trained teacher under its final name.

    Several processes (torchrun) train one teacher together: rank 0 alone takes the
    lock, decides and publishes, the others follow its decisions (on the lock they
    would wait for a training that needs them).
    """
    from kdzoo.run import distributed

    if distributed.broadcast_object(rundir.is_finished(path)):
        log(f"teacher {name}: reusing {path}")
        return
    lock = rundir.teacher_lock_file(path)
    with exclusive_lock(lock, on_wait=lambda: log(f"teacher {name}: waiting for another process training it ({lock})")) if distributed.is_main() else nullcontext():
        if distributed.broadcast_object(rundir.is_finished(path)):
            log(f"teacher {name}: reusing {path}")
            return
        partial = rundir.teacher_partial_dir(path)
        how = f"training {spec.model.name}" if isinstance(spec, TrainSpec) else f"distilling {spec.student.model.name} from {', '.join(t.name for t in spec.teachers)}"
        log(f"teacher {name}: {how} with {spec.augmentation.name} augmentation -> {path}")
        train(spec, partial)
        if distributed.is_main():
            if path.exists():  # not finished, so not published by this protocol: keep it aside
                path.rename(path.with_name(f"{path.name}.stale-{os.getpid()}"))
            os.rename(partial, path)
        distributed.barrier()  # published before any rank loads it


def prepare_teachers(spec: DistillSpec, host: PluginHost, train: Callable[[TrainSpec, Path], Any], log: Log,
                     data: ImageData | None = None) -> list[Teacher]:
    """Load checkpoint teachers (so a mismatch fails before any training), then train
    (``train(spec, dir)``) or reuse inline teachers, and return them all in spec order.
    ``data``: the spec's dataset when the caller has loaded it already."""
    from kdzoo.run.data import load_data

    data = load_data(spec.data, host.registry) if data is None else data
    loaded = {t.name: (t.checkpoint, *load_teacher(host, t.checkpoint, data)) for t in spec.teachers if t.checkpoint is not None}
    for t in spec.teachers:
        if t.train is None:
            continue
        path = teacher_dir(t.train)
        cached_teacher(t.name, t.train, path, train, log)
        loaded[t.name] = (path, *load_teacher(host, path, data))
    teachers = []
    for t in spec.teachers:
        path, network, manifest = loaded[t.name]
        aug_ref = t.augmentation or (t.train.augmentation if t.train else None)
        augmentation = None
        if spec.teacher_views == "own":
            if aug_ref is None:
                raise KdzooError(f"teachers.{t.name}: teacher_views 'own' needs an augmentation for a checkpoint teacher")
            augmentation = build_augmentation(host.registry, aug_ref.name, aug_ref.params)
        teachers.append(Teacher(t.name, network, augmentation, str(path), manifest.get("metrics", {})))
    return teachers
