"""The machine's limit (fp32 matrix-multiply peak) and the data pipeline alone."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from benchmarks.loops import memory_loader
from src.data import CIFAR10DataModule
from src.data.augment import PRESETS
from src.data.loader import pixels_to_float


def matmul_peak(size: int, rounds: int = 5, min_seconds: float = 0.5) -> float:
    """fp32 FLOP/s of square matrix multiplies: the best of `rounds` timed rounds."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)  # warm-up: thread pool, kernel selection
    reps = 1
    while True:  # enough multiplies per round to last min_seconds
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
        reps *= 2
    best = elapsed
    for _ in range(rounds - 1):
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * reps / best


def kornia_presets() -> dict[str, nn.Module] | None:
    """kornia.augmentation equivalents of our presets (None when kornia is not installed)."""
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    return {
        "flip": K.RandomHorizontalFlip(),
        "flip_crop": nn.Sequential(K.RandomHorizontalFlip(), K.RandomCrop((32, 32), padding=4)),
        "seed004": nn.Sequential(
            K.RandomHorizontalFlip(),
            K.RandomRotation(10.0),
            K.RandomAffine(degrees=0.0, shear=10.0, scale=(0.8, 1.2)),
            K.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        ),
    }


def pipeline_rate(
    dm: CIFAR10DataModule,
    batch_size: int,
    augment: Callable[[Tensor], Tensor] | None,
    seconds: float,
) -> float:
    """Training batches per second of the data pipeline alone: index the uint8 batch from the
    in-memory split, convert it to float in [0, 1], augment it (as the training step sees it).
    Runs for about `seconds` (at most one epoch)."""
    done, start = 0, time.perf_counter()
    for images, _labels in memory_loader(dm, batch_size):
        x = pixels_to_float(images)
        if augment is not None:
            x = augment(x)
        done += 1
        if time.perf_counter() - start >= seconds:
            break
    return done / (time.perf_counter() - start)


def pipeline_rates(
    dm: CIFAR10DataModule, batch_sizes: tuple[int, ...], seconds: float, rounds: int
) -> dict:
    """Batches per second for every augmentation preset, ours and kornia's, at each batch size
    (the best of `rounds`)."""
    kornia = kornia_presets()
    dm.train_images.sum()  # page the mapped split in first, as any training run has
    results: dict = {}
    for batch_size in batch_sizes:
        rows = results.setdefault(f"batch {batch_size}", {})
        for name, ours in PRESETS.items():
            rows[name] = {
                "ours": max(pipeline_rate(dm, batch_size, ours, seconds) for _ in range(rounds))
            }
            if kornia is not None and name in kornia:
                rows[name]["kornia"] = max(
                    pipeline_rate(dm, batch_size, kornia[name], seconds) for _ in range(rounds)
                )
    if kornia is None:
        results["kornia"] = "not installed (pip install -e '.[bench]')"
    return results
