"""Pretrained weights at download URLs, cached by torch's hub (``TORCH_HOME/hub/checkpoints``):
torchvision's weights enums (``pretrained: IMAGENET1K_V2``) and timm weights published by URL.

Torch-free at import; torchvision and torch are imported when a weights name is resolved.
The hub-wide offline switches (``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1``) also stop
these downloads, so one switch makes a cluster node offline for every library.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kdzoo.api import KdzooError
from kdzoo_models.hub import offline_flags, one_line

CHUNK = 1 << 20
# The URL's file name carries the first digits of its sha256 (torch.hub's check_hash convention).
HASH_PREFIX = re.compile(r"-([a-f0-9]*)\.")


def checkpoints_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch/...`` by default), where torch.hub caches URLs."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_url_file(url: str) -> Path:
    """Where torch.hub's ``load_state_dict_from_url`` keeps ``url``: the checkpoints folder, the URL's file name."""
    return checkpoints_dir() / os.path.basename(urlparse(url).path)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download_url(url: str, destination: Path) -> None:
    """Download ``url`` to ``destination``, checking the sha256 prefix its file name carries.

    The one place this plugin downloads a URL (tests replace it). torch.hub writes a
    temporary file and renames it, so a broken download never leaves a cached file.
    """
    flags = offline_flags()
    if flags:
        raise KdzooError(f"cannot download {url}: offline ({', '.join(flags)}); unset it where there is internet")
    import torch.hub

    match = HASH_PREFIX.search(destination.name)
    destination.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(destination), match.group(1) if match else None, progress=False)


def locate_url(model: str, url: str, *, download: bool, hub: str, weights_id: str | None = None) -> dict[str, Any]:
    """Where the weights at ``url`` are in the torch hub cache, downloading them with ``download``.

    Not cached: fine online (the library downloads them when the model is built), a
    ``KdzooError`` naming ``model`` and the fix when offline.
    """
    file = cached_url_file(url)
    source: dict[str, Any] = {"hub": hub, "id": weights_id or url, "url": url}
    fetched = False
    if not file.is_file():
        if not download:
            flags = offline_flags()
            if flags:
                raise KdzooError(
                    f"{model}: pretrained weights {source['id']} ({file.name}) are not in the torch hub cache "
                    f"({file.parent}) and this machine is offline ({', '.join(flags)}); run `kdzoo fetch SPEC` "
                    "where there is internet, with the same TORCH_HOME (or copy that file here)"
                )
            return {**source, "sha256": None, "cache": None}
        try:
            download_url(url, file)
        except KdzooError as exc:
            raise KdzooError(f"{model}: {exc}") from exc
        except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError; a hash mismatch a RuntimeError
            raise KdzooError(f"{model}: cannot download {url}: {one_line(exc)}") from exc
        fetched = True
    # Hashing reads the whole file: done for `kdzoo fetch` and when building, not for a cache check.
    sha256 = file_sha256(file) if download else None
    return {**source, "sha256": sha256, "cache": str(file), "fetched": fetched}


# ----------------------------------------------------------------------------- torchvision
def torchvision_weights(arch: str, name: str) -> Any:
    """The member ``name`` (e.g. ``IMAGENET1K_V2``, or ``DEFAULT``) of ``arch``'s torchvision weights enum."""
    from torchvision import models as tvm

    from kdzoo_models.common import unknown_name_error

    arches = tvm.list_models(module=tvm)
    if arch not in arches:
        raise unknown_name_error("torchvision model", arch, arches)
    try:
        enum = tvm.get_model_weights(arch)
    except (KeyError, ValueError):
        raise KdzooError(f"torchvision model '{arch}' has no pretrained weights") from None
    allowed = [member.name for member in enum] + ["DEFAULT"]
    try:
        return enum[name]  # DEFAULT is an alias: this gives the member it stands for
    except KeyError:
        raise KdzooError(
            f"torchvision model '{arch}': unknown weights '{name}'; allowed: {', '.join(allowed)} "
            f"(the members of {enum.__name__})"
        ) from None


def weights_id(weights: Any) -> str:
    """The full name of a weights enum member, e.g. ``ResNet50_Weights.IMAGENET1K_V2``."""
    return f"{type(weights).__name__}.{weights.name}"


def locate_torchvision(params: Any, *, download: bool) -> dict[str, Any] | None:
    """The ``weights`` function of the ``torchvision`` model: the weights enum named by ``pretrained``."""
    if not isinstance(params.pretrained, str):
        return None  # False, or true with a local weights file
    weights = torchvision_weights(params.arch, params.pretrained)
    model = f"torchvision model '{params.arch}'"
    return locate_url(model, weights.url, download=download, hub="torchvision", weights_id=weights_id(weights))
