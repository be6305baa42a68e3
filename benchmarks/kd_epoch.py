"""KD-epoch throughput, side by side in one process: kdzoo against the loops it replaces.

Contenders (each one epoch over the same training images, batch 128, two CIFAR ResNet-20
teachers under inference mode -> a CIFAR ResNet-8 student, SGD + per-batch cosine):

- ``kdzoo``: kdzoo's training pass (0.6 CE + 0.4 KD at T=3), uint8 images in memory,
  vectorised augmentation, channels_last + bf16 autocast where the device supports it.
- ``plain``: the same work as a hand-tuned PyTorch loop (the same tricks, no framework).
- ``authors``: the style of the reference implementations (RepDistiller, mdistiller):
  fp32, contiguous, torchvision ``ImageFolder`` + PIL transforms in a ``DataLoader``,
  with the study's strong augmentation (RandomResizedCrop + flip + AutoAugment CIFAR-10
  + Cutout 16); ``kdzoo-strong`` is kdzoo with its ``paper-strong`` policy, the same
  augmentation vectorised.
- ``sweep``: K arms (one teacher pair, K different losses) as one fused pass
  (``fused``) against the same K arms one by one (``--fuse off``: ``separate``).

Several interleaved rounds (the order rotates each round) after one warm-up epoch of
each; prints the median images per second, the spread (min-max) and the ratios.
``--profile`` times the parts of one kdzoo KD step (teachers, student forward,
backward, optimizer, augmentation, loss, framework glue) with torch's profiler.

    python benchmarks/kd_epoch.py --threads 2 --images 5000 --rounds 3
    python benchmarks/kd_epoch.py --threads 1 --only sweep --sweep 8
    python benchmarks/kd_epoch.py --profile --images 2048
    python benchmarks/kd_epoch.py --device cuda --images 20000

The images: the CIFAR-10 JPEGs (``../shared/datasets/cifar10-jpg.tar.gz``, ``--archive``)
when present, else synthetic shapes; the authors' loop reads the same images written
as JPEG files into an ImageFolder. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from kd_loops import AuthorsLoop, PlainLoop, profile_step, sync  # noqa: E402

from kdzoo.host.loading import load_plugins  # noqa: E402
from kdzoo.run.arm import Arm  # noqa: E402
from kdzoo.run.teachers import Teacher  # noqa: E402
from kdzoo.run.trainer import TrainingPass, pass_inputs  # noqa: E402
from kdzoo.spec import validate_spec  # noqa: E402

BATCH = 128
ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpg.tar.gz"
SWEEP_LOSSES = [  # the zoo's weights (docs/zoo.md): logit and feature methods
    [{"name": "ce", "weight": 0.6}, {"name": "kd", "weight": 0.4, "params": {"temperature": 3.0}}],
    [{"name": "ce"}, {"name": "dkd", "weight": 1.0}],
    [{"name": "ce"}, {"name": "dist", "weight": 1.0}],
    [{"name": "ce"}, {"name": "wttm", "weight": 1.0}],
    [{"name": "ce"}, {"name": "nkd", "weight": 1.0}],
    [{"name": "ce"}, {"name": "fitnet", "weight": 100}],
    [{"name": "ce"}, {"name": "at", "weight": 1000}],
    [{"name": "ce"}, {"name": "sp", "weight": 3000}],
]


def data_spec(images: int, archive: Path) -> dict:
    if archive.is_file():
        return {"name": "cifar10-jpg", "params": {"archive": str(archive)}, "train_limit": images, "test_limit": 256}
    return {"name": "synthetic-shapes", "params": {"train_size": images, "test_size": 256}}


def spec_for(host, device: torch.device, data: dict, out: Path, losses: list, augmentation: str, compile_: bool, threads: int):
    model = lambda depth: {"name": "cifar-resnet", "params": {"depth": depth}}  # noqa: E731
    return validate_spec({
        "kind": "distill", "name": "kd-epoch", "epochs": 100, "batch_size": BATCH, "device": device.type, "threads": threads,
        "data": data, "augmentation": augmentation, "student": {"model": model(8)},
        "teachers": [{"name": f"t{i}", "train": {"model": model(20)}} for i in (1, 2)],  # never trained: given below
        "losses": losses, "output_dir": str(out), "compile": compile_,
    }, host.registry)


class KdzooEpochs:
    """kdzoo's pass over ``specs`` (one arm each), fused or one pass per arm."""

    def __init__(self, host, specs, teachers, out: Path, fused: bool):
        inputs = pass_inputs(specs[0], host, teachers)
        self.data = inputs.data
        arms = [Arm(spec, host, out / f"arm{i}", inputs, log=lambda _: None) for i, spec in enumerate(specs)]
        self.passes = [TrainingPass(inputs, arms)] if fused else [TrainingPass(inputs, [arm]) for arm in arms]
        self.device = inputs.runtime.device
        self.epoch = 0
        self.images = arms[0].steps_per_epoch * BATCH
        self.precision = "bf16" if inputs.runtime.autocast_dtype else "fp32"

    def __call__(self) -> None:
        for training in self.passes:
            training.train_epoch(self.epoch, training.arms, True)
        self.epoch += 1
        sync(self.device)


def measure(contenders: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per epoch of each contender: one warm-up, then ``rounds`` rotating rounds."""
    for run in contenders.values():  # allocator, oneDNN/cuDNN first-call costs, DataLoader workers
        run()
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            contenders[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def report(title: str, images: dict[str, int], seconds: dict[str, list[float]], ratios: list[tuple[str, str]]) -> None:
    print(f"\n{title}")
    rate = {name: [images[name] / s for s in values] for name, values in seconds.items()}
    for name, values in rate.items():
        print(f"  {name:14s} {statistics.median(values):8.0f} img/s  (min {min(values):.0f}, max {max(values):.0f}, rounds {len(values)})")
    for a, b in ratios:
        per_round = [x / y for x, y in zip(rate[a], rate[b])]
        print(f"  ratio {a}/{b}: {statistics.median(rate[a]) / statistics.median(rate[b]):.2f}"
              f"  (per round: {', '.join(f'{v:.2f}' for v in per_round)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--images", type=int, default=5000, help="training images per epoch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["epoch", "plain", "sweep"],
                        help="one part only (default: epoch and sweep); plain: kdzoo against the plain loop alone")
    parser.add_argument("--sweep", type=int, default=8, help="arms in the sweep (at most 8)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of the authors' loop")
    parser.add_argument("--archive", type=Path, default=ARCHIVE, help="cifar10-jpg.tar.gz (else synthetic shapes)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks' forward (kdzoo and plain)")
    parser.add_argument("--profile", action="store_true", help="only profile one kdzoo KD step, by part")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    host = load_plugins()
    data = data_spec(args.images, args.archive)
    build = lambda depth: host.registry.build("model", "cifar-resnet", {"depth": depth}, num_classes=10, image_size=32)  # noqa: E731
    torch.manual_seed(0)
    teachers = [Teacher(f"t{i}", build(20)) for i in (1, 2)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        spec = lambda losses, aug="weak": spec_for(host, device, data, out, losses, aug, args.compile, args.threads)  # noqa: E731
        kd = spec(SWEEP_LOSSES[0])
        kdzoo = KdzooEpochs(host, [kd], teachers, out / "kdzoo", fused=False)
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        print(f"kd_epoch: {kdzoo.images} images/epoch ({data['name']}), batch {BATCH}, 2x ResNet-20 -> ResNet-8, {where}, "
              f"kdzoo precision {kdzoo.precision}, torch {torch.__version__}")
        if args.profile:
            profile_step(kdzoo.passes[0], steps=8)
            return
        if args.only == "plain":
            plain = PlainLoop(build, device, kdzoo.data, host.registry.build("augmentation", "weak"), args.compile)
            seconds = measure({"kdzoo": kdzoo, "plain": plain}, args.rounds)
            report("one KD epoch (0.6 CE + 0.4 KD, T=3)", {"kdzoo": kdzoo.images, "plain": plain.images}, seconds, [("kdzoo", "plain")])
        if args.only in (None, "epoch"):
            plain = PlainLoop(build, device, kdzoo.data, host.registry.build("augmentation", "weak"), args.compile)
            strong = KdzooEpochs(host, [spec(SWEEP_LOSSES[0], "paper-strong")], teachers, out / "strong", fused=False)
            authors = AuthorsLoop(build, device, kdzoo.data, out / "imagefolder", args.workers)
            contenders = {"kdzoo": kdzoo, "plain": plain, "kdzoo-strong": strong, "authors-strong": authors}
            seconds = measure(contenders, args.rounds)
            images = {"kdzoo": kdzoo.images, "plain": plain.images, "kdzoo-strong": strong.images, "authors-strong": authors.images}
            report("one KD epoch (0.6 CE + 0.4 KD, T=3)", images, seconds, [("kdzoo", "plain"), ("kdzoo-strong", "authors-strong")])
        if args.only in (None, "sweep"):
            specs = [spec(losses) for losses in SWEEP_LOSSES[: args.sweep]]
            fused = KdzooEpochs(host, specs, teachers, out / "fused", fused=True)
            separate = KdzooEpochs(host, specs, teachers, out / "separate", fused=False)
            seconds = measure({"fused": fused, "separate": separate}, args.rounds)
            names = ", ".join(s.losses[-1].name for s in specs)
            report(f"a sweep of {len(specs)} arms ({names}): one fused pass vs --fuse off", {"fused": fused.images, "separate": separate.images},
                   seconds, [("fused", "separate")])


if __name__ == "__main__":
    main()
