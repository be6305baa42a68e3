"""Throughput of every kdzoo-data augmentation and synthetic-shapes generation time.

    .venv/bin/python plugins/kdzoo-data/benchmarks/data_throughput.py [--threads 2] [--repeats 20]

Augmentations run on a (512, 3, 32, 32) uint8 batch of random pixels with default
params; the figure is the median over repeats (each repeat draws fresh randomness).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import kdzoo_data
from kdzoo.host.loading import PluginHost, PluginInfo, new_manager, register_plugin
from kdzoo.host.registry import Registry


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: lazy imports, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    host = PluginHost(new_manager(), Registry())
    register_plugin(host, kdzoo_data, PluginInfo(name="kdzoo-data", module="kdzoo_data"))
    registry = host.registry

    images = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    print(f"torch {torch.__version__}, {args.threads} threads, batch {tuple(images.shape)} uint8, median of {args.repeats}")
    for name in registry.names("augmentation"):
        augment = registry.build("augmentation", name)
        generator = torch.Generator().manual_seed(0)
        seconds = median_seconds(lambda: augment(images, generator), args.repeats)
        print(f"  {name:14s} {images.shape[0] / seconds:12,.0f} img/s")

    shapes_params = kdzoo_data.SyntheticShapesParams()  # 5000 train + 1000 test, 32 px
    seconds = median_seconds(lambda: registry.build("dataset", "synthetic-shapes", shapes_params, seed=0, cache_dir=None), 3)
    total = shapes_params.train_size + shapes_params.test_size
    print(f"  synthetic-shapes: {total} images ({shapes_params.image_size} px, clutter {shapes_params.clutter}) in {seconds:.2f} s")


if __name__ == "__main__":
    main()
