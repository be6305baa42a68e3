"""The loops kd_epoch.py measures kdzoo against, and its step profile.

- ``PlainLoop``: what one would write by hand for kdzoo's KD epoch, with the same tricks
  (uint8 images in memory, vectorised augmentation, channels_last + bf16, inference-mode
  teachers).
- ``AuthorsLoop``: the style of the reference implementations (RepDistiller,
  mdistiller): fp32, ImageFolder + PIL transforms, a DataLoader.
- ``profile_step``: where the time of a kdzoo KD step goes, part by part.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

BATCH = 128
TEMPERATURE = 3.0
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kd_loss(logits, teacher_logits, targets):
    """0.6 CE + 0.4 KD (T=3, mean over teachers), as kdzoo's default distillation."""
    log_p = F.log_softmax(logits.float() / TEMPERATURE, dim=1)
    kd = torch.stack([
        F.kl_div(log_p, F.softmax(t.float() / TEMPERATURE, dim=1), reduction="batchmean") * TEMPERATURE**2
        for t in teacher_logits
    ]).mean()
    return 0.6 * F.cross_entropy(logits.float(), targets) + 0.4 * kd


class PlainLoop:
    """kdzoo's KD epoch written by hand, with the same tricks."""

    def __init__(self, build, device: torch.device, data, augment, compile_: bool):
        from kdzoo.run.runtime import bf16_supported

        self.device = device
        self.bf16 = bf16_supported(device)
        self.student = build(8).to(device, memory_format=torch.channels_last)
        self.teachers = [build(20).to(device, memory_format=torch.channels_last).eval().requires_grad_(False) for _ in range(2)]
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        on_gpu = device.type == "cuda"
        self.uint8 = data.train_images.to(device) if on_gpu else data.train_images  # CIFAR-sized data fit on any GPU
        self.labels = data.train_labels.to(device)
        self.augment = augment
        self.steps = self.seed = 0
        self.images = len(self.labels) - len(self.labels) % BATCH  # per epoch
        for network in [self.student, *self.teachers] if compile_ else []:
            network.forward = torch.compile(network.forward)

    def __call__(self) -> None:
        n = len(self.labels)
        self.seed += 1
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        generator = torch.Generator(device=self.device if self.device.type == "cuda" else "cpu").manual_seed(self.seed)
        self.student.train()
        for start in range(0, n - n % BATCH, BATCH):
            index = order[start : start + BATCH].to(self.uint8.device)
            x = self.augment(self.uint8.index_select(0, index), generator)
            x = x.to(self.device, non_blocking=True).float().div_(255).contiguous(memory_format=torch.channels_last)
            y = self.labels.index_select(0, index.to(self.device))
            self.optimizer.param_groups[0]["lr"] = 0.1 * 0.5 * (1 + math.cos(math.pi * self.steps / 10_000))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                with torch.inference_mode():
                    teacher_logits = [t(x) for t in self.teachers]
                logits = self.student(x)
            loss = kd_loss(logits, [t.clone() for t in teacher_logits], y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.steps += 1
        sync(self.device)


class Cutout:
    """DeVries & Taylor's Cutout on a normalised tensor: one square hole, centre anywhere."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[1:]
        y, x = torch.randint(h, ()).item(), torch.randint(w, ()).item()
        top, bottom = max(0, y - self.size // 2), min(h, y + self.size // 2)
        left, right = max(0, x - self.size // 2), min(w, x + self.size // 2)
        image = image.clone()
        image[:, top:bottom, left:right] = 0.0
        return image


class AuthorsLoop:
    """The reference implementations' style: fp32, ImageFolder + PIL with the study's strong
    augmentation, a DataLoader; teachers under no_grad."""

    def __init__(self, build, device: torch.device, data, root: Path, workers: int):
        from PIL import Image
        from torchvision import datasets, transforms as T

        for i, (image, label) in enumerate(zip(data.train_images, data.train_labels.tolist())):
            folder = root / f"class{label:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:06d}.jpg", quality=95)
        transform = T.Compose([
            T.RandomResizedCrop(32, scale=(0.2, 1.0)), T.RandomHorizontalFlip(), T.AutoAugment(T.AutoAugmentPolicy.CIFAR10),
            T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD), Cutout(16),
        ])
        self.dataset = datasets.ImageFolder(str(root), transform=transform)
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=BATCH, shuffle=True, num_workers=workers, drop_last=True,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        )
        self.device = device
        self.student = build(8).to(device)
        self.teachers = [build(20).to(device).eval() for _ in range(2)]
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        self.images = len(self.dataset) - len(self.dataset) % BATCH

    def __call__(self) -> None:
        self.student.train()
        for x, y in self.loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with torch.no_grad():
                teacher_logits = [t(x) for t in self.teachers]
            loss = kd_loss(self.student(x), teacher_logits, y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        sync(self.device)


# ----------------------------------------------------------------------------- the step profile
def profile_step(training, steps: int) -> None:
    """Time each part of kdzoo's KD steps (one arm) with wall-clock timers around the calls
    that do the work; what no part holds is the framework's glue (the loop, the lr
    schedule, zero_grad, the uint8 -> float conversion, guards, the progress bar).
    CPU only: there every op runs synchronously, so a timer around a call is its cost."""
    from kdzoo.run import step as step_module, trainer

    arm = training.arms[0]
    parts: dict[str, float] = defaultdict(float)

    def timed(label, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                parts[label] += time.perf_counter() - start
        return wrapper

    real = {"teacher_forward": trainer.teacher_forward, "teacher_view": trainer.teacher_view, "loss_term": step_module.loss_term}
    trainer.teacher_forward = timed("teachers (forward, inference)", real["teacher_forward"])
    trainer.teacher_view = timed("teacher outputs copied for the arm", real["teacher_view"])
    step_module.loss_term = timed("losses (CE + KD forward)", real["loss_term"])
    training.augmentation = timed("augmentation", training.augmentation)
    arm.step_module.student_outputs = timed("student forward", arm.step_module.student_outputs)
    arm.optimizer.step = timed("optimizer step", arm.optimizer.step)
    backward = torch.Tensor.backward
    torch.Tensor.backward = timed("backward (student)", backward)
    epoch_batches = training.batches.epoch

    def batches(*args, **kwargs):
        iterator = iter(epoch_batches(*args, **kwargs))
        for _ in range(steps):
            start = time.perf_counter()
            batch = next(iterator)
            parts["batch gather (index_select)"] += time.perf_counter() - start
            yield batch

    training.batches.epoch = batches
    real_begin = arm.begin_epoch

    def begin_epoch(fused):
        real_begin(fused)
        arm.tally.add = timed("loss tally (on device)", arm.tally.add)

    arm.begin_epoch = begin_epoch
    try:
        training.train_epoch(0, [arm], True)  # warm-up
        parts.clear()
        start = time.perf_counter()
        training.train_epoch(1, [arm], True)
        total = time.perf_counter() - start
    finally:
        trainer.teacher_forward, trainer.teacher_view, step_module.loss_term = real["teacher_forward"], real["teacher_view"], real["loss_term"]
        torch.Tensor.backward = backward
    glue = total - sum(parts.values())
    print(f"\nprofile of {steps} kdzoo KD steps (batch {BATCH}): {1000 * total / steps:.1f} ms per step")
    for label, seconds in sorted(parts.items(), key=lambda item: -item[1]):
        print(f"  {label:38s} {1000 * seconds / steps:7.2f} ms  {100 * seconds / total:5.1f}%")
    print(f"  {'framework glue (all the rest)':38s} {1000 * glue / steps:7.2f} ms  {100 * glue / total:5.1f}%")
    framework = glue + parts["loss tally (on device)"]
    print(f"  framework overhead (glue + loss tally): {100 * framework / total:.1f}% of a step")
