"""Training-step throughput of the precision settings kdzoo chooses from (`precision`,
`channels_last` in the spec), side by side on the same model and batch.

    python benchmarks/precision.py --model cifar-resnet --depth 20 --steps 20

Prints images per second for fp32, channels_last, bf16 autocast and both, with the
ratio to plain fp32. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from kdzoo.host.loading import load_plugins


def step_rate(depth: int, channels_last: bool, bf16: bool, steps: int, batch_size: int) -> float:
    torch.manual_seed(0)
    net = load_plugins().registry.build("model", "cifar-resnet", {"depth": depth}, num_classes=10, image_size=32)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    images = torch.rand(batch_size, 3, 32, 32)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch_size,))
    warmup = 3
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    settings = {"fp32": (False, False), "channels_last": (True, False), "bf16": (False, True), "channels_last + bf16": (True, True)}
    rates = {name: step_rate(args.depth, cl, bf, args.steps, args.batch_size) for name, (cl, bf) in settings.items()}
    print(f"CIFAR ResNet-{args.depth}, batch {args.batch_size}, {torch.get_num_threads()} threads")
    for name, rate in rates.items():
        print(f"{name:22s} {rate:8.0f} img/s  {rate / rates['fp32']:5.2f}x")


if __name__ == "__main__":
    main()
