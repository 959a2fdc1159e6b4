"""The decoded data set as a uint8 cache on disk: built once, atomically, under a file lock.

Layout of one cache entry (a folder named by its key):
    train_images.npy  N x 32 x 32 x 3 uint8     train_labels.npy  N int64
    test_images.npy   M x 32 x 32 x 3 uint8     test_labels.npy   M int64
    meta.json         classes, per-channel mean and std of the training split, the source

The entry is written into a temporary folder and renamed into place, so a reader sees either
nothing or a complete entry; the lock makes parallel jobs wait for one builder instead of racing.
Arrays are memory-mapped copy-on-write: jobs on one machine share the pages.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from src.data.sources import Decoded
from src.errors import DataError

log = logging.getLogger(__name__)

ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass
class CachedData:
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    mean: list[float]
    std: list[float]
    path: Path


def cache_key(description: dict) -> str:
    """A short stable name for what was decoded (source, folder, fingerprint of its files)."""
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()
    return f"{description['source']}-{digest[:16]}"


def load_or_build(cache_dir: Path, description: dict, build: Callable[[], Decoded]) -> CachedData:
    """Return the cached entry for `description`, decoding it with `build` the first time."""
    entry = cache_dir / cache_key(description)
    if not (entry / "meta.json").exists():
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            with FileLock(str(entry) + ".lock"):
                if not (entry / "meta.json").exists():  # another job may have built it meanwhile
                    _write_entry(entry, description, build())
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                fix = "free some space or set data.cache_dir (or CIFAR10_LAB_CACHE) to another disk"
            elif err.errno in (errno.EEXIST, errno.ENOTDIR):  # a file where a folder should be
                file = next((p for p in (cache_dir, *cache_dir.parents) if p.is_file()), cache_dir)
                fix = f"{file} is a file, not a folder: set data.cache_dir to a folder"
            else:
                fix = "set data.cache_dir (or CIFAR10_LAB_CACHE) to a writable folder"
            raise DataError(
                f"cannot write the data cache in {cache_dir} ({err.strerror or err}): {fix}"
            ) from err
    return _read_entry(entry)


def _write_entry(entry: Path, description: dict, decoded: Decoded) -> None:
    log.info("writing data cache %s", entry)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=entry.parent))
    try:
        for name in ARRAYS:
            np.save(tmp / f"{name}.npy", getattr(decoded, name))
        channels = [decoded.train_images[..., c] for c in range(3)]  # one at a time: less memory
        mean = np.array([ch.mean(dtype=np.float64) for ch in channels]) / 255
        std = np.array([ch.std(dtype=np.float64) for ch in channels]) / 255
        meta = {
            "classes": decoded.classes,
            "mean": mean.round(6).tolist(),
            "std": std.round(6).tolist(),
            **description,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        for path in tmp.iterdir():  # data on disk before the rename makes it visible
            with open(path, "rb") as file:
                os.fsync(file.fileno())
        tmp.rename(entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_entry(entry: Path) -> CachedData:
    meta = json.loads((entry / "meta.json").read_text())
    # Copy-on-write maps: pages are shared between processes, and torch gets writable arrays.
    arrays = {name: np.load(entry / f"{name}.npy", mmap_mode="c") for name in ARRAYS}
    return CachedData(
        **arrays, classes=meta["classes"], mean=meta["mean"], std=meta["std"], path=entry
    )
