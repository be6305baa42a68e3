"""A student that predicts through a head a loss supplies (``Loss.student_head``): SimKD's
projector and the teacher's reused classifier.

The student's network is not changed: :class:`HeadedNetwork` shares its body, taps the
head's module path with a forward hook each call, and returns the head's logits. The run
evaluates the student through it, and its checkpoint holds the head's state dict under
``HEAD_PREFIX`` with the manifest's ``head`` entry (the loss, its params, the tap and the
head's config): wherever the checkpoint is loaded (``kdzoo.load_model``, ``kdzoo export``,
a teacher from a checkpoint), the loss's plugin rebuilds the head
(``Loss.build_student_head``) and the model predicts as it was evaluated.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from kdzoo import rundir
from kdzoo.api import Network, StudentHead
from kdzoo.api.taps import tapped
from kdzoo.errors import ComponentError, KdzooError
from kdzoo.host.build import build_loss, plugin_code


class HeadedNetwork(Network):
    """``network`` predicting through ``head``: logits = ``head(output of module tap)``.

    The body is ``network``'s own (same modules, same state dict under ``body``), so taps,
    stages and checkpoints see the student as it is; only ``forward`` differs (the body's
    own logits are computed and dropped). ``loss``: the name of the loss that supplied it."""

    def __init__(self, network: Network, head: nn.Module, tap: str, loss: str):
        super().__init__(
            network.body, num_classes=network.num_classes, input_size=network.input_size,
            mean=network.mean.flatten().tolist(), std=network.std.flatten().tolist(), stages=network.stages,
            embedding=network.embedding, cam=network.cam, attention=network.attention, logits_of=network.logits_of,
            family=network.family, weights_source=network.weights_source,
        )
        self.to(network.mean.device)  # the normalisation buffers where the network's are
        self.head = head
        self.head_tap = tap
        self.head_loss = loss

    def forward(self, images: Tensor) -> Tensor:
        with tapped(self, [self.head_tap]) as features:
            super().forward(images)
        return self.head(features[self.head_tap])


def find_student_head(terms, components, losses) -> tuple[Any, StudentHead] | None:
    """(term, head) of the one loss that supplies the student's head, or None; two are refused."""
    found = []
    for term, component, loss in zip(terms, components, losses):
        with plugin_code(component, "student_head"):
            head = loss.student_head()
        if head is None:
            continue
        if not isinstance(head, StudentHead) or not isinstance(head.module, nn.Module) or not isinstance(head.tap, str):
            raise ComponentError(f"loss '{component.name}' (plugin '{component.plugin}') returned {head!r} from student_head(); "
                                 "a loss must return None or a kdzoo.api.StudentHead(tap, module, config)")
        found.append((term, head))
    if len(found) > 1:
        names = " and ".join(f"'{term.name}'" for term, _ in found)
        raise KdzooError(f"losses: {names} both make the student predict through a head of their own; keep one")
    return found[0] if found else None


def with_student_head(registry, network: Network, manifest: dict[str, Any], tensors: dict[str, Tensor], weights) -> Network:
    """``network`` (a checkpoint's, loaded) predicting through the head its manifest
    describes, rebuilt by the loss's plugin with the checkpoint's head weights; ``network``
    itself when the manifest names no head."""
    entry = manifest.get("head")
    if entry is None:
        return network
    where = f"checkpoint {weights}"
    try:
        name, params, tap, config = entry["loss"], entry.get("params") or {}, entry["tap"], entry.get("config") or {}
    except (KeyError, TypeError):
        raise KdzooError(f"{where}: its manifest's head entry is not a kdzoo head ({entry!r})") from None
    try:
        component = registry.get("loss", name)
    except KdzooError as exc:
        raise KdzooError(f"{where} predicts through the head of loss '{name}', which cannot be rebuilt here: {exc}") from None
    loss = build_loss(registry, name, params)
    with plugin_code(component, "build_student_head"):
        head = loss.build_student_head(config)
    state = {k[len(rundir.HEAD_PREFIX):]: v for k, v in tensors.items() if k.startswith(rundir.HEAD_PREFIX)}
    try:
        head.load_state_dict(state)
    except RuntimeError as exc:
        raise KdzooError(f"{where}: its head tensors do not match the head loss '{name}' builds: {exc}") from None
    try:
        network.submodule(tap)
    except AttributeError:
        raise KdzooError(f"{where}: the head reads module '{tap}', which {manifest['model']['name']} has not") from None
    return HeadedNetwork(network, head, tap, name)


def student_predictor(network: Network, terms, components, losses) -> tuple[tuple[Any, StudentHead] | None, Network]:
    """(term, head) of the loss that supplies the student's head (or None), and what the
    student predicts through: ``network`` itself, or a :class:`HeadedNetwork` over it."""
    found = find_student_head(terms, components, losses)
    if found is None:
        return None, network
    term, head = found
    return found, HeadedNetwork(network, head.module, head.tap, term.name)


def record_head(found: tuple[Any, StudentHead] | None, tensors: dict[str, Tensor], manifest: dict[str, Any],
                summary: dict[str, Any]) -> None:
    """Add the head (when a loss supplies one) to a finished run's checkpoint tensors, its
    manifest (what rebuilds it) and its summary (its parameters, part of the deployed model)."""
    if found is None:
        return
    term, head = found
    tensors.update({f"{rundir.HEAD_PREFIX}{k}": v for k, v in head.module.state_dict().items()})
    manifest["head"] = {"loss": term.name, "params": term.params, "tap": head.tap, "config": head.config}
    summary["head_parameters"] = sum(p.numel() for p in head.module.parameters())
