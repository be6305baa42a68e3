"""KD-epoch throughput: kdzoo's trainer epoch against a plain hand-written PyTorch loop
doing the same work, side by side in one process.

The same work: the same uint8 images in memory (synthetic-shapes, 32 px), the same
augmentation (kdzoo's weak policy: pad-4 crop + flip, per image), two CIFAR ResNet-20
teachers under inference mode -> a CIFAR ResNet-8 student, 0.6 CE + 0.4 KD (T=3), SGD
with a cosine schedule stepped per batch, batch 128, channels_last + bf16 autocast where
the device supports it. On CUDA both keep the images on the GPU and augment them there
with a CUDA generator; on the CPU both gather and augment in host memory.

    python benchmarks/kd_epoch.py --device cpu --images 2048 --repeats 2
    python benchmarks/kd_epoch.py --device cuda --images 20000 --repeats 3 [--compile]

One warm-up epoch of each first (not timed), then each repeat times one epoch of each,
alternating which goes first. Prints images per second of each (median over repeats)
and the ratio kdzoo / plain. ``--compile``: both compile their networks' forward
(kdzoo's spec ``compile: true``); the warm-up epoch then includes the compilation.
Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kdzoo.host.loading import load_plugins
from kdzoo.run.runtime import bf16_supported
from kdzoo.run.teachers import Teacher
from kdzoo.run.trainer import Trainer
from kdzoo.spec import validate_spec

BATCH = 128
TEMPERATURE = 3.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kdzoo_trainer(host, device: torch.device, images: int, out: Path, compile_: bool) -> Trainer:
    model = lambda depth: {"name": "cifar-resnet", "params": {"depth": depth}}  # noqa: E731
    spec = validate_spec({
        "kind": "distill", "name": "kd-epoch", "epochs": 100, "batch_size": BATCH, "device": device.type,
        "data": {"name": "synthetic-shapes", "params": {"train_size": images, "test_size": 100}},
        "augmentation": "weak", "student": {"model": model(8)},
        "teachers": [{"name": f"t{i}", "train": {"model": model(20)}} for i in (1, 2)],  # never trained: given below
        "losses": [{"name": "ce", "weight": 0.6}, {"name": "kd", "weight": 0.4, "params": {"temperature": TEMPERATURE}}],
        "output_dir": str(out), "compile": compile_,
    }, host.registry)
    teachers = [Teacher(f"t{i}", host.registry.build("model", "cifar-resnet", {"depth": 20}, num_classes=10, image_size=32)) for i in (1, 2)]
    return Trainer(spec, host, out / "run", teachers, log=lambda _: None)


class PlainLoop:
    """What one would write by hand for the same KD epoch, with the same tricks."""

    def __init__(self, host, device: torch.device, images: torch.Tensor, labels: torch.Tensor, compile_: bool):
        build = lambda depth: host.registry.build("model", "cifar-resnet", {"depth": depth}, num_classes=10, image_size=32)  # noqa: E731
        self.device = device
        self.bf16 = bf16_supported(device)
        self.student = build(8).to(device, memory_format=torch.channels_last)
        self.teachers = [build(20).to(device, memory_format=torch.channels_last).eval().requires_grad_(False) for _ in range(2)]
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        self.images = images.to(device)  # uint8: CIFAR-sized data fit on any GPU
        self.labels = labels.to(device)
        self.augment = host.registry.build("augmentation", "weak")
        self.steps = 0
        for network in [self.student, *self.teachers] if compile_ else []:
            network.forward = torch.compile(network.forward)

    def epoch(self, seed: int) -> None:
        n = len(self.labels)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(self.device)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        self.student.train()
        for start in range(0, n - n % BATCH, BATCH):
            index = order[start : start + BATCH]
            x = self.augment(self.images.index_select(0, index), generator)
            x = x.float().div_(255).contiguous(memory_format=torch.channels_last)
            y = self.labels.index_select(0, index)
            self.optimizer.param_groups[0]["lr"] = 0.1 * 0.5 * (1 + math.cos(math.pi * self.steps / 10_000))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                with torch.inference_mode():
                    teacher_logits = [t(x).float() for t in self.teachers]
                logits = self.student(x).float()
            log_p = F.log_softmax(logits / TEMPERATURE, dim=1)
            kd = torch.stack([
                F.kl_div(log_p, F.softmax(t.clone() / TEMPERATURE, dim=1), reduction="batchmean") * TEMPERATURE**2
                for t in teacher_logits
            ]).mean()
            loss = 0.6 * F.cross_entropy(logits, y) + 0.4 * kd
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.steps += 1
        sync(self.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--images", type=int, default=10000, help="training images (synthetic-shapes, 32 px)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks' forward in both")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    host = load_plugins()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = kdzoo_trainer(host, device, args.images, Path(tmp), args.compile)
        plain = PlainLoop(host, device, trainer.data.train_images, trainer.data.train_labels, args.compile)
        seen = trainer.steps_per_epoch * BATCH
        state = {"epoch": 0, "step": 0}

        def kdzoo_epoch() -> None:
            state["step"], _ = trainer.train_epoch(state["epoch"], state["step"], True)
            state["epoch"] += 1
            sync(device)

        contenders = {"kdzoo": kdzoo_epoch, "plain": lambda: plain.epoch(state["epoch"])}
        for run in contenders.values():  # warm-up: allocator, cuDNN autotuning, first-call costs
            run()
        rates: dict[str, list[float]] = {name: [] for name in contenders}
        for repeat in range(args.repeats):
            names = list(contenders) if repeat % 2 == 0 else list(reversed(contenders))
            for name in names:
                start = time.perf_counter()
                contenders[name]()
                rates[name].append(seen / (time.perf_counter() - start))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"KD epoch, {seen} images, batch {BATCH}, 2x ResNet-20 -> ResNet-8, {where}, "
          f"precision {'bf16' if trainer.runtime.autocast_dtype else 'fp32'}, data on {trainer.batches.where}"
          f"{', compiled' if args.compile else ''}")
    for name, values in rates.items():
        print(f"{name:6s} {statistics.median(values):8.0f} img/s  (repeats: {', '.join(f'{v:.0f}' for v in values)})")
    print(f"ratio kdzoo/plain: {statistics.median(rates['kdzoo']) / statistics.median(rates['plain']):.3f}")


if __name__ == "__main__":
    main()
