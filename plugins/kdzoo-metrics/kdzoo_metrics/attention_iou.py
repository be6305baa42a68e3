"""Attention IoU between models (and with ground-truth object masks)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.api import EvalBatch, Metric, Network
from kdzoo.api import KdzooError
from kdzoo_metrics.attention import attention_maps, binary_masks, mask_overlap, required_taps, resolve_method
from kdzoo.api import pair_key, role_key, role_pairs
from kdzoo_metrics.object_baselines import centre_ranks, masks_of_area, random_ranks
from kdzoo_metrics.tally import Tally

# Overlays are stored as JSON lists in every run's summary: keep them thumbnail-sized.
OVERLAY_MAX_SIDE = 32


def thumbnail(images: Tensor, max_side: int = OVERLAY_MAX_SIDE) -> Tensor:
    """``(B, ..., H, W)`` float images area-downsampled so the longer side is at most ``max_side``."""
    height, width = images.shape[-2:]
    if max(height, width) <= max_side:
        return images
    scale = max_side / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    flat = images.reshape(-1, 1, height, width) if images.ndim == 3 else images
    small = F.interpolate(flat.float(), size=size, mode="area")
    return small.reshape(*images.shape[:-2], *size)


class AttentionIoU(Metric):
    """IoU of thresholded attention maps (see :mod:`kdzoo_metrics.attention`).

    Per image: map -> bilinear upsampling to the input size -> per-image min-max ->
    ``> threshold`` -> mask. Keys:

    - ``attn_iou/A~B``: per-image IoU of the two models' masks, averaged over images,
      for student~teacher and teacher~teacher pairs (the ensemble has no map);
    - ``attn_iou_per_batch/A~B``: the study authors' figure: IoU of the pooled pixels
      of each run of ``per_batch_size`` consecutive images, averaged over runs
      weighted by run length;
    - ``attn_object_iou/<role>``: per-image IoU of each model's mask with the
      ground-truth object mask, when the dataset provides masks;
    - ``attn_object_iou_random/<role>`` and ``attn_object_iou_disc/<role>``: the same
      IoU for masks with exactly as many pixels as that model's mask on that image but
      blind to it: drawn uniformly at random (a fixed seed plus the image's index in the
      split, so the same on every run and for any batch size), and a centred disc (the
      pixels nearest the centre); see :mod:`kdzoo_metrics.object_baselines`. The chance
      levels ``attn_object_iou`` is to be read against;
    - ``attn_overlay/<role>`` and ``attn_overlay_images`` (lists, not figures): every
      model's normalised map of the first ``overlay_images`` images (3 decimals) and
      those images as uint8 ``(N, 3, H, W)`` nested lists, both at most
      ``OVERLAY_MAX_SIDE`` pixels a side, for attention-overlay plots.

    A constant map (any constant, not only 0: see
    :func:`kdzoo_metrics.attention.min_max_normalise`) normalises to 0 and gives an
    empty mask. An image whose two masks are both empty has no defined IoU and is left
    out of the per-image means (and adds nothing to its run's pooled pixels); a figure
    with no image left is nan. An empty mask against a non-empty one has IoU 0.
    So an image counts in a model's three object figures when its mask or the object
    mask is non-empty (an empty model mask, and so empty baselines, against an object
    gives 0 in all three) and is left out of all three when both are empty: the
    baselines have the model's area, so the three are means over the same images.
    """

    final_only: ClassVar[bool] = True

    def taps(self, networks: dict[str, Network]) -> dict[str, list[str]]:
        wanted = {}
        for role, network in networks.items():
            try:
                wanted[role] = required_taps(network, self.params.method)
            except KdzooError:
                pass  # a role without a usable map may never be compared; update says so if it is
        return wanted

    def reset(self) -> None:
        self.tally = Tally()  # per-image IoU sums and valid-image counts, by key
        # Open runs by index (placed by EvalBatch.offset): pair -> pooled intersection, union.
        self.run_overlap: dict[int, dict[str, tuple[Tensor, Tensor]]] = {}
        self.run_filled: dict[int, int] = {}
        # (offset, role -> maps, images) of the first images, on the CPU
        self.overlays: list[tuple[int, dict[str, Tensor], Tensor]] = []
        self.seen = 0  # images so far: the offset when a batch has none

    def _maps(self, batch: EvalBatch, roles: list[str], images: Tensor, features: bool = True) -> dict[str, Tensor]:
        """Normalised ``(B, H, W)`` maps of ``images``; ``features=False`` ignores the batch's
        taps (they belong to the whole batch) and lets each network run its own forward."""
        maps = {}
        for role in roles:
            network = batch.networks[role]
            maps[role] = attention_maps(
                network,
                images,
                batch.features.get(role) if features else None,
                resolve_method(network, self.params.method),
                logits=batch.logits.get(role)[: len(images)] if role in batch.logits else None,
                gradcam_layer=self.params.gradcam_layer,
            )
        return maps

    def _has_map(self, network: Network) -> bool:
        try:
            resolve_method(network, self.params.method)
            return True
        except KdzooError:
            return False  # e.g. no CamHead: such a model is left out of the overlays

    def _keep_overlays(self, batch: EvalBatch, computed: dict[str, Tensor], offset: int) -> None:
        """Keep the first ``overlay_images`` images of the split with every model's map."""
        wanted = self.params.overlay_images - offset
        if wanted <= 0:
            return
        images = batch.images[:wanted]
        roles = [r for r in batch.logits if r in computed or (r in batch.networks and self._has_map(batch.networks[r]))]
        # Roles compared for IoU already have maps; the others run a forward of these few images only.
        missing = self._maps(batch, [r for r in roles if r not in computed], images, features=False)
        maps = {role: thumbnail(computed[role][: len(images)] if role in computed else missing[role]).cpu() for role in roles}
        self.overlays.append((offset, maps, thumbnail(images).cpu()))

    def _add_per_image(self, name: str, intersection: Tensor, union: Tensor) -> None:
        valid = union > 0
        iou = intersection[valid].double() / union[valid].double()
        self.tally.add(f"sum:{name}", iou.sum())
        self.tally.add(f"count:{name}", valid.sum())

    def update(self, batch: EvalBatch) -> None:
        pairs = [(a, b) for a, b in role_pairs(batch, with_ensemble=False) if a in batch.networks and b in batch.networks]
        roles = list(dict.fromkeys(role for pair in pairs for role in pair))
        if batch.masks is not None:
            roles += [role for role in batch.logits if role in batch.networks and role not in roles]
        maps = self._maps(batch, roles, batch.images) if roles else {}
        offset = self.seen if batch.offset is None else batch.offset
        self.seen += len(batch.images)
        self._keep_overlays(batch, maps, offset)
        if not roles:
            return
        masks = {role: binary_masks(value, self.params.threshold) for role, value in maps.items()}

        overlaps = {}
        for left, right in pairs:
            name = pair_key("attn_iou", left, right)
            overlaps[name] = mask_overlap(masks[left], masks[right])
            self._add_per_image(name, *overlaps[name])
        self._add_runs(overlaps, len(batch.images), offset)

        if batch.masks is not None:
            objects = batch.masks.to(next(iter(masks.values())).device)
            if objects.shape[-2:] != batch.images.shape[-2:]:
                objects = F.interpolate(objects[:, None].float(), size=batch.images.shape[-2:], mode="nearest")[:, 0]
            self._add_object_ious(masks, objects.bool(), offset)

    def _add_object_ious(self, masks: dict[str, Tensor], objects: Tensor, offset: int) -> None:
        """Each model's object IoU and its two same-area baselines (one random ranking of
        the batch's pixels and the centre ranking serve every role)."""
        count, height, width = objects.shape
        random_order = random_ranks(count, height, width, offset).to(objects.device)
        centre_order = centre_ranks(height, width).to(objects.device)
        for role, mask in masks.items():
            areas = mask.sum(dim=(1, 2))
            self._add_per_image(role_key("attn_object_iou", role), *mask_overlap(mask, objects))
            random_mask = masks_of_area(random_order, areas, height, width)
            self._add_per_image(role_key("attn_object_iou_random", role), *mask_overlap(random_mask, objects))
            disc = masks_of_area(centre_order, areas, height, width)
            self._add_per_image(role_key("attn_object_iou_disc", role), *mask_overlap(disc, objects))

    def _add_runs(self, overlaps: dict[str, tuple[Tensor, Tensor]], total: int, offset: int) -> None:
        """Pool pixels over runs of per_batch_size consecutive images (runs straddle batches)."""
        size = self.params.per_batch_size
        start = 0
        while start < total:
            run = (offset + start) // size
            stop = min(total, (run + 1) * size - offset)
            pieces = [(name, (intersection[start:stop].sum(), union[start:stop].sum())) for name, (intersection, union) in overlaps.items()]
            self._pool(run, pieces, stop - start)
            start = stop
            if self.run_filled[run] == size:
                self._close_run(run)

    def _pool(self, run: int, pieces, images: int) -> None:
        pooled = self.run_overlap.setdefault(run, {})
        for name, (intersection, union) in pieces:
            if name in pooled:
                intersection, union = pooled[name][0] + intersection, pooled[name][1] + union
            pooled[name] = (intersection, union)
        self.run_filled[run] = self.run_filled.get(run, 0) + images

    def _close_run(self, run: int) -> None:
        for name, (intersection, union) in self.run_overlap.pop(run, {}).items():
            self._add_run(name, intersection, union, self.run_filled[run], self.tally)
        del self.run_filled[run]

    def reduce(self, reducer) -> None:
        """Several processes: sum the tallies, add up the pieces of runs that straddled two
        ranks' batches (closing those now whole) and keep every rank's overlays."""
        self.tally.reduce(reducer)
        self.seen = reducer.sum(self.seen)
        gathered = reducer.gather((self.run_overlap, self.run_filled, self.overlays))
        self.run_overlap, self.run_filled = {}, {}
        for runs, counts, _ in gathered:
            for run, count in counts.items():
                self._pool(run, list(runs.get(run, {}).items()), count)
        for run in sorted(self.run_filled):
            if self.run_filled[run] == self.params.per_batch_size:
                self._close_run(run)
        self.overlays = sorted((chunk for _, _, overlays in gathered for chunk in overlays), key=lambda chunk: chunk[0])

    @staticmethod
    def _add_run(name: str, intersection: Tensor, union: Tensor, images: int, tally: Tally) -> None:
        """One run's pooled IoU, weighted by its number of images (as the authors weight batches)."""
        if union > 0:
            tally.add(f"run_sum:{name}", intersection.double() / union.double() * images)
            tally.add(f"run_count:{name}", torch.tensor(images))

    def compute(self) -> dict[str, Any]:
        # The open run is added to a copy: compute leaves the state as it was.
        tally = Tally()
        tally.sums = {name: value.clone() for name, value in self.tally.sums.items()}
        for run in sorted(self.run_overlap):  # the last, shorter run
            for name, (intersection, union) in self.run_overlap[run].items():
                self._add_run(name, intersection, union, self.run_filled[run], tally)

        def mean(total: str, count: str) -> float:
            # nan when no image (or run) had a non-empty union
            return float(tally[total]) / int(tally[count]) if count in tally and int(tally[count]) else float("nan")

        out: dict[str, Any] = {}
        for name in tally.names():
            kind, _, key = name.partition(":")
            if kind != "sum":
                continue
            out[key] = mean(name, f"count:{key}")
            if key.startswith("attn_iou/"):
                out[key.replace("attn_iou/", "attn_iou_per_batch/", 1)] = mean(f"run_sum:{key}", f"run_count:{key}")
        if self.overlays:
            chunks = sorted(self.overlays, key=lambda chunk: chunk[0])
            for role in dict.fromkeys(role for _, maps, _ in chunks for role in maps):
                # float64 before rounding: a rounded float32 prints as 0.12300000339746475 in JSON
                maps = torch.cat([maps[role] for _, maps, _ in chunks if role in maps])
                out[role_key("attn_overlay", role)] = maps.double().round(decimals=3).tolist()
            images = torch.cat([images for _, _, images in chunks]).mul(255).round().clamp(0, 255).to(torch.uint8)
            out["attn_overlay_images"] = images.tolist()
        return out
