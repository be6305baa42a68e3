"""kdzoo's data path against the usual ImageFolder + PIL + DataLoader pipeline.

Both produce the same thing per batch: 128 CIFAR-10 training images, randomly cropped
(padding 4) and flipped, as a float tensor in [0, 1]. The baseline decodes JPEGs with
PIL and augments per image in torchvision transforms (DataLoader with 0 and 2
workers); kdzoo decodes once into a uint8 tensor (the imagefolder plugin's cache) and
augments whole batches with vectorised code in the main process.

    python benchmarks/data_path.py --images 10000

Prints images per second of each and the ratio to the best baseline. Uses the CIFAR-10
JPEG archive in ../shared/datasets (unpacked into a temporary directory).
"""

from __future__ import annotations

import argparse
import tarfile
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms

from kdzoo.run.data import batch_indices, to_float
from kdzoo.host.loading import load_plugins

ARCHIVE = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "cifar10-jpg.tar.gz"


def unpack_train(archive: Path, target: Path, per_class: int) -> Path:
    counts: dict[str, int] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if member.isfile() and len(parts) == 4 and parts[1] == "train":
                if counts.get(parts[2], 0) < per_class:
                    counts[parts[2]] = counts.get(parts[2], 0) + 1
                    tar.extract(member, target, filter="data")
    return target / "cifar10" / "train"


def time_baseline(root: Path, workers: int, batch_size: int) -> float:
    pipeline = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor()])
    dataset = torchvision.datasets.ImageFolder(str(root), transform=pipeline)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)
    start = time.perf_counter()
    seen = sum(images.shape[0] for images, _ in loader)
    return seen / (time.perf_counter() - start)


def time_kdzoo(root: Path, batch_size: int, cache: Path) -> tuple[float, float]:
    registry = load_plugins().registry
    start = time.perf_counter()
    data = registry.build("dataset", "imagefolder", {"train_root": str(root), "test_root": str(root)}, seed=0, cache_dir=cache)
    decode_s = time.perf_counter() - start
    augment = registry.build("augmentation", "weak", {"padding_mode": "zeros"})
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    seen = 0
    for index in batch_indices(len(data.train_labels), batch_size, generator, drop_last=True):
        images = to_float(augment(data.train_images[index], generator), torch.device("cpu"), channels_last=True)
        seen += images.shape[0]
    return seen / (time.perf_counter() - start), decode_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10000, help="training images used (a per-class-balanced subset)")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = unpack_train(ARCHIVE, Path(tmp), args.images // 10)
        baseline = {f"ImageFolder + PIL, {w} workers": time_baseline(root, w, args.batch_size) for w in (0, 2)}
        kdzoo_rate, decode_s = time_kdzoo(root, args.batch_size, Path(tmp) / "cache")
        _, cached_decode_s = time_kdzoo(root, args.batch_size, Path(tmp) / "cache")
    best = max(baseline.values())
    print(f"{'pipeline':40s} {'img/s':>10s} {'vs best baseline':>17s}")
    for name, rate in baseline.items():
        print(f"{name:40s} {rate:10.0f} {rate / best:16.2f}x")
    print(f"{'kdzoo uint8 tensor + vectorised weak':40s} {kdzoo_rate:10.0f} {kdzoo_rate / best:16.2f}x")
    print(f"one-time decode of {args.images} JPEGs: {decode_s:.2f} s (from the cache afterwards: {cached_decode_s:.2f} s)")


if __name__ == "__main__":
    main()
