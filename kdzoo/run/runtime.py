"""Where and how a run computes: device, threads, bf16 autocast, memory layout, torch.compile."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from kdzoo.api import Network
from kdzoo.errors import KdzooError
from kdzoo.run import distributed
from kdzoo.spec import AnySpec

@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: fp32

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:  # oneDNN's bf16 kernels need AVX512-BF16 / AMX; elsewhere bf16 emulation is slower than fp32
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def select_runtime(spec: AnySpec) -> Runtime:
    if spec.threads:
        torch.set_num_threads(spec.threads)
    name = spec.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise KdzooError(f"device: '{spec.device}' asked for CUDA but torch sees no CUDA device; use 'auto' or 'cpu'")
    if name.startswith("cuda") and distributed.active():
        name = _rank_gpu(spec.device)
    device = torch.device(name)
    if spec.precision == "bf16" and not bf16_supported(device):
        raise KdzooError(f"precision: bf16 is not supported on {device} here; use 'auto' or 'fp32'")
    use_bf16 = spec.precision == "bf16" or (spec.precision == "auto" and bf16_supported(device))
    return Runtime(device, torch.bfloat16 if use_bf16 else None)


def _rank_gpu(requested: str) -> str:
    """Under torchrun each rank drives one GPU: ``cuda:LOCAL_RANK``."""
    local = distributed.local_rank()
    if requested not in ("auto", "cuda"):
        raise KdzooError(f"device: '{requested}' pins one GPU, but under torchrun rank {distributed.rank()} drives cuda:LOCAL_RANK; use 'auto' or 'cuda'")
    if local >= torch.cuda.device_count():
        raise KdzooError(f"LOCAL_RANK {local} has no GPU: torch sees {torch.cuda.device_count()}; start at most that many processes per machine")
    torch.cuda.set_device(local)
    return f"cuda:{local}"


def wants_channels_last(spec: AnySpec, network: Network) -> bool:
    return spec.channels_last if spec.channels_last is not None else network.family == "cnn"


def compile_forward(network: Network) -> None:
    """``network.forward`` through ``torch.compile`` (default mode), in place (spec ``compile: true``).

    The module itself is unchanged: its state dict (checkpoints) and a DDP wrapper see
    the same module. A compiled graph does not call forward hooks registered after it
    was compiled, and taps are forward hooks added per call: while any module of the
    network has one (a feature loss, an attention metric), the call runs eagerly, so
    taps always see their outputs. Off by default: on the CPU it compiles for 15-30 s
    and buys nothing over eager channels_last + bf16 (PERF-NOTES); it should pay on
    GPUs, where small CNNs are bound by kernel launches (docs/performance.md).
    """
    if getattr(network, "_kdzoo_compiled", False):  # a teacher shared by two runs of one process
        return
    eager = network.forward
    compiled = torch.compile(eager)

    def forward(images):
        hooked = any(m._forward_hooks or m._forward_pre_hooks for m in network.modules())
        return eager(images) if hooked else compiled(images)

    network.forward = forward
    network._kdzoo_compiled = True
