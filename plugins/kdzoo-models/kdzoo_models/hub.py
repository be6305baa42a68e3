"""Pretrained weights from the Hugging Face hub, for timm and transformers models.

Everything goes through huggingface_hub's own cache (``HF_HOME``, default
``~/.cache/huggingface``; the hub cache is ``HF_HOME/hub`` or ``HF_HUB_CACHE``) and obeys
its offline mode (``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1``). The ``locate_*``
functions are the models' registered ``weights`` functions (see docs/hooks.md): the core
calls them with ``download=False`` before a run (are the weights cached, or can they be
downloaded?) and with ``download=True`` for ``kdzoo fetch``.

Torch-free at import (the core imports it to check a spec); timm is imported only to
resolve a timm model name to its hub repository.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdzoo.api import KdzooError

OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
HUB = "huggingface"

# (files that must all be cached, patterns to download): alternatives in the order the
# libraries try them. transformers reads config.json and one of these weight layouts.
TRANSFORMERS_FILE_SETS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("config.json", "model.safetensors"), ("config.json", "preprocessor_config.json", "model.safetensors")),
    (
        ("config.json", "model.safetensors.index.json"),
        ("config.json", "preprocessor_config.json", "model.safetensors.index.json", "model-*-of-*.safetensors"),
    ),
    (("config.json", "pytorch_model.bin"), ("config.json", "preprocessor_config.json", "pytorch_model.bin")),
    (
        ("config.json", "pytorch_model.bin.index.json"),
        ("config.json", "preprocessor_config.json", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"),
    ),
)


def one_line(exc: BaseException) -> str:
    """A library's exception message on one line (huggingface_hub's span several)."""
    return " ".join(str(exc).split())


def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def offline_flags() -> list[str]:
    """The offline switches that are on, as ``NAME=value``; empty when downloads are allowed.

    huggingface_hub reads its switch when it is imported, so both the environment and
    the library's own ``constants.HF_HUB_OFFLINE`` count.
    """
    on = [f"{name}={os.environ[name]}" for name in OFFLINE_ENV if _is_true(os.environ.get(name))]
    if not on:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            on.append("HF_HUB_OFFLINE=1")
    return on


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache the libraries read and write (``HF_HUB_CACHE``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_file(repo_id: str, filename: str, revision: str | None) -> Path | None:
    """The cached ``filename`` of ``repo_id`` at ``revision`` (a branch, tag or commit; default main)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, revision=revision)
    return Path(found) if isinstance(found, str) else None


def download_snapshot(repo_id: str, *, revision: str | None, allow_patterns: Sequence[str]) -> Path:
    """Download the files of ``repo_id`` matching ``allow_patterns`` into the hub cache; the snapshot folder.

    The one place this plugin downloads from the Hugging Face hub (tests replace it).
    """
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(allow_patterns)))


def _cached_set(repo_id: str, revision: str | None, files: Sequence[str]) -> list[Path] | None:
    paths = [cached_file(repo_id, name, revision) for name in files]
    return paths if all(paths) else None  # type: ignore[return-value]


def locate_repo(
    model: str,
    repo_id: str,
    revision: str | None,
    file_sets: Sequence[tuple[Sequence[str], Sequence[str]]],
    *,
    download: bool,
) -> dict[str, Any]:
    """Where ``repo_id``'s weights are: the first of ``file_sets`` fully cached, downloading
    (``download=True``) the alternatives in order until one is.

    Without ``download``, weights that are not cached are fine online (the library downloads
    them when the model is built) and a ``KdzooError`` offline, naming ``model`` and the fix.
    """
    fetched = False
    found = next((paths for files, _ in file_sets if (paths := _cached_set(repo_id, revision, files))), None)
    if found is None and download:
        for files, patterns in file_sets:
            try:
                download_snapshot(repo_id, revision=revision, allow_patterns=patterns)
            except (OSError, ValueError) as exc:  # HTTP, offline mode and missing repos are OSErrors
                raise KdzooError(
                    f"{model}: cannot download {_spelled(repo_id, revision)} from the Hugging Face hub: {one_line(exc)}"
                ) from exc
            found = _cached_set(repo_id, revision, files)
            if found is not None:
                fetched = True
                break
        if found is None:
            wanted = " or ".join("+".join(files) for files, _ in file_sets)
            raise KdzooError(f"{model}: {_spelled(repo_id, revision)} on the Hugging Face hub has no {wanted}")
    if found is None:
        flags = offline_flags()
        if flags:
            raise KdzooError(
                f"{model}: pretrained weights {_spelled(repo_id, revision)} are not in the Hugging Face hub cache "
                f"({hub_cache_dir()}) and the hub is offline ({', '.join(flags)}); run `kdzoo fetch SPEC` where "
                "there is internet, with the same HF_HOME (or copy that cache here)"
            )
        return {"hub": HUB, "id": repo_id, "revision": None, "requested_revision": revision, "cache": None}
    snapshot = found[-1].parent  # snapshots/<commit>/<file>
    return {
        "hub": HUB,
        "id": repo_id,
        "revision": snapshot.name,
        "requested_revision": revision,
        "file": found[-1].name,
        "cache": str(snapshot),
        "fetched": fetched,
    }


def _spelled(repo_id: str, revision: str | None) -> str:
    return f"{repo_id}@{revision}" if revision else repo_id


def manifest_source(source: dict[str, Any]) -> dict[str, Any]:
    """What a run's manifest records of a located, cached source (``initial_weights``): the hub,
    id and resolved revision, or for a URL its sha256; no machine paths."""
    if source.get("url") and source.get("cache") and not source.get("sha256"):
        from kdzoo_models.torch_hub import file_sha256

        source = {**source, "sha256": file_sha256(source["cache"])}
    return {k: v for k, v in source.items() if k not in ("cache", "fetched") and v is not None}


# ----------------------------------------------------------------------------- timm
def timm_safe_alternatives(filename: str) -> list[str]:
    """The safetensors files timm tries before ``filename`` (its ``_get_safe_alternatives`` rule)."""
    if filename == "pytorch_model.bin":
        return ["model.safetensors"]
    if filename == "open_clip_pytorch_model.bin":
        return ["open_clip_model.safetensors"]
    return [filename[: -len(".bin")] + ".safetensors"] if filename.endswith(".bin") else []


def timm_pretrained_source(arch: str) -> tuple[str, str, str | None]:
    """How timm loads ``arch``'s pretrained weights: ``("hf-hub", repo_id, filename or None)``
    or ``("url", url, None)``; a ``KdzooError`` when timm has none."""
    import timm
    from timm.models import get_pretrained_cfg

    from kdzoo_models.common import unknown_name_error

    if not timm.is_model(arch):
        raise unknown_name_error("timm model", arch, timm.list_models(pretrained=True), hint=" (see timm.list_pretrained())")
    try:
        cfg = get_pretrained_cfg(arch)
    except RuntimeError:
        cfg = None  # an unknown tag
    if cfg is None:
        tags = timm.list_pretrained(f"{arch.split('.')[0]}.*")
        raise KdzooError(f"timm model '{arch}' has no pretrained weights; pretrained tags: {', '.join(tags) or 'none'}")
    if cfg.hf_hub_id:
        return "hf-hub", cfg.hf_hub_id, cfg.hf_hub_filename
    if cfg.url:
        return "url", cfg.url, None
    raise KdzooError(f"timm model '{arch}' has no downloadable pretrained weights (neither a hub id nor a URL)")


def locate_timm(params: Any, *, download: bool) -> dict[str, Any] | None:
    """The ``weights`` function of the ``timm`` model: hub weights for ``pretrained: true``
    without a local ``weights`` file (the Hugging Face hub, or a URL into ``TORCH_HOME``)."""
    if not params.pretrained or params.weights:
        return None
    model = f"timm model '{params.arch}'"
    kind, location, filename = timm_pretrained_source(params.arch)
    if kind == "url":
        if params.revision is not None:
            raise KdzooError(f"{model}: its weights are published at a URL ({location}), which has no revisions")
        from kdzoo_models.torch_hub import locate_url

        return locate_url(model, location, download=download, hub="timm")
    repo_id, _, pinned = location.partition("@")
    revision = params.revision or pinned or None
    filename = filename or "pytorch_model.bin"  # timm's default, tried after its safetensors alternative
    file_sets = [((name,), (name, "config.json")) for name in [*timm_safe_alternatives(filename), filename]]
    return locate_repo(model, repo_id, revision, file_sets, download=download)


# ----------------------------------------------------------------------------- transformers
def locate_hf(params: Any, *, download: bool) -> dict[str, Any] | None:
    """The ``weights`` function of the ``hf`` model: the hub repository ``model_id`` at ``revision``."""
    if params.model_id is None:
        return None
    model = f"hf model '{params.model_id}'"
    return locate_repo(model, params.model_id, params.revision, TRANSFORMERS_FILE_SETS, download=download)
