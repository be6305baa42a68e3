"""Several processes (DDP under torchrun): what plugins need to stay correct across ranks.

In a single process (no ``torch.distributed`` process group) every helper here is the
identity, so plugins call them unconditionally. Under ``torchrun`` each rank sees its
shard of every training batch and whole evaluation batches of its own: a loss with
state built from more than its shard (CRD's memory bank) gathers what the other ranks
saw, and a metric combines its accumulators in :meth:`kdzoo.api.Metric.reduce`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


def _active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """The number of processes training together (1 without a process group)."""
    import torch.distributed as dist

    return dist.get_world_size() if _active() else 1


def rank() -> int:
    """This process's rank, 0 to ``world_size() - 1`` (0 without a process group)."""
    import torch.distributed as dist

    return dist.get_rank() if _active() else 0


def all_gather_tensor(tensor: Tensor) -> Tensor:
    """Every rank's ``tensor`` concatenated along dim 0, in rank order; the tensor
    itself in a single process.

    Call it on every rank, in the same order (it is a collective). The first dimension
    may differ between ranks (uneven shards); the others must match. The result is
    detached (no gradient flows back to other ranks): use it for state updates such as
    memory banks, not inside the loss.
    """
    if not _active() or world_size() == 1:
        return tensor
    import torch.distributed as dist

    tensor = tensor.detach().contiguous()
    sizes = [torch.zeros(1, dtype=torch.int64, device=tensor.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device))
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    padded = tensor
    if tensor.shape[0] < longest:  # all_gather needs equal shapes: pad, then trim
        padded = torch.cat([tensor, tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts)])


def _to_cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class Reducer:
    """The collectives :meth:`kdzoo.api.Metric.reduce` receives, over the ranks of one
    evaluation (every rank calls the same methods in the same order). The core builds
    it; ``Reducer()`` in a single process sums over that one process.

    - ``rank``: this process's rank, 0 to ``world_size - 1``.
    - ``world_size``: the number of ranks.
    """

    rank: int = field(default_factory=lambda: rank())
    world_size: int = field(default_factory=lambda: world_size())

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (any picklable object), in rank order. Tensors inside
        dicts, lists and tuples travel through the CPU and arrive there."""
        if self.world_size == 1:
            return [_to_cpu(value)]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, _to_cpu(value))
        return out

    def sum(self, value: Any) -> Any:
        """The sum over ranks of a tensor, an ``int``/``float``, or a ``dict`` (str keys,
        nested) of those; the same type comes back, tensors on their own device.

        Dict keys may differ between ranks (a rank that saw no batch has none): the
        result holds the union, a key missing on a rank counting as zero. Integer
        and bool tensors are summed exactly in int64; floating ones in float64 and
        cast back to their dtype. Tensors under one key must have the same shape on
        every rank. Anything else (a list, an object) raises ``TypeError``: its
        combination is not a sum, so the metric combines it with :meth:`gather`.
        """
        leaves: dict[tuple[str, ...], Any] = {}
        _flatten(value, (), leaves)
        signatures = {path: _signature(leaf) for path, leaf in leaves.items()}
        union: dict[tuple[str, ...], tuple] = {}
        for theirs in self.gather(signatures) if self.world_size > 1 else [signatures]:
            for path, signature in theirs.items():
                union.setdefault(path, signature)
        paths = sorted(union)
        summed = self._sum_leaves([leaves.get(p) for p in paths], [union[p] for p in paths])
        if not isinstance(value, dict):
            return summed[0] if paths else value
        result: dict[str, Any] = {}
        for path, leaf in zip(paths, summed):
            node = result
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = leaf
        return result

    def _sum_leaves(self, leaves: list[Any], signatures: list[tuple]) -> list[Any]:
        # One flat float64 and one flat int64 buffer: two all_reduce calls, however many keys.
        flat = {torch.float64: [], torch.int64: []}
        for leaf, (kind, shape, dtype, _device) in zip(leaves, signatures):
            accumulate = torch.float64 if kind == "float" or (kind == "tensor" and dtype.is_floating_point) else torch.int64
            if leaf is None:
                part = torch.zeros(shape, dtype=accumulate)
            elif isinstance(leaf, Tensor):
                part = leaf.detach().to("cpu", accumulate)
            else:
                part = torch.tensor(leaf, dtype=accumulate)
            flat[accumulate].append(part.reshape(-1))
        totals = {}
        for dtype, parts in flat.items():
            buffer = torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)
            if self.world_size > 1 and buffer.numel():
                import torch.distributed as dist

                dist.all_reduce(buffer)  # on the CPU: gloo serves CPU tensors whatever the devices
            totals[dtype] = iter(buffer.split([p.numel() for p in parts]) if parts else [])
        out = []
        for leaf, (kind, shape, dtype, device) in zip(leaves, signatures):
            accumulate = torch.float64 if kind == "float" or (kind == "tensor" and dtype.is_floating_point) else torch.int64
            part = next(totals[accumulate]).reshape(shape)
            if kind == "int":
                out.append(int(part.item()))
            elif kind == "float":
                out.append(float(part.item()))
            else:
                target = leaf.device if isinstance(leaf, Tensor) else _local_device(device)
                out.append(part.to(target, dtype))
        return out


def _flatten(value: Any, path: tuple[str, ...], out: dict[tuple[str, ...], Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"Reducer.sum: dict keys must be str, got {type(key).__name__} at {'.'.join(path) or 'top'}")
            _flatten(item, (*path, key), out)
    elif isinstance(value, Tensor) or _is_number(value):
        out[path] = value
    else:
        where = ".".join(path) or "value"
        raise TypeError(f"Reducer.sum cannot sum {where} of type {type(value).__name__} (not a tensor, number or dict)")


def _signature(leaf: Any) -> tuple:
    if isinstance(leaf, Tensor):
        return ("tensor", tuple(leaf.shape), leaf.dtype, leaf.device.type)
    return ("int" if isinstance(leaf, int) else "float", (), None, "cpu")


def _local_device(kind: str) -> torch.device:
    """This rank's device of a kind (a key only another rank had: cuda means our own GPU)."""
    if kind == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(kind)


__all__ = ["Reducer", "all_gather_tensor", "rank", "world_size"]
