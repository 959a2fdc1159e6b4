"""Read CIFAR-10 into uint8 arrays: torchvision's official files or an image folder.

Both readers return a `Decoded` with images N x 32 x 32 x 3 (uint8, RGB), int64 labels and the
class names in label order. Decoding happens once; `src.data.cache` stores the result.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from src.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SIZE = 32
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


@dataclass
class Decoded:
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]


def load_image(path: Path, size: int = IMAGE_SIZE) -> tuple[np.ndarray, bool]:
    """Decode one image file to size x size x 3 uint8 RGB; also say whether it had to be resized."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"cannot read image {path}: {err}; remove or replace the file") from err
    resized = rgb.size != (size, size)
    if resized:
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8), resized


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(class_dir: Path) -> list[Path]:
    return sorted(
        p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def folder_fingerprint(root: Path) -> list:
    """Cheap summary of an image-folder tree (names, counts, folder times) for the cache key."""
    parts = []
    for split in ("train", "test"):
        for class_dir in _class_dirs(root / split):
            stat = class_dir.stat()
            parts.append([split, class_dir.name, stat.st_mtime_ns, len(list(class_dir.iterdir()))])
    return parts


def check_folder(root: Path) -> None:
    """Fail with a clear message unless `root` holds train/<class>/ and test/<class>/ folders."""
    hint = "data.root must hold train/<class>/* and test/<class>/* (set data.root=PATH)"
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist: {hint}")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"no {split}/ folder in {root}: {hint}")
    train_classes = [p.name for p in _class_dirs(root / "train")]
    test_classes = [p.name for p in _class_dirs(root / "test")]
    if not train_classes:
        raise DataError(f"no class folders in {root / 'train'}: {hint}")
    if train_classes != test_classes:
        raise DataError(
            f"train and test classes differ in {root}: train has {train_classes}, "
            f"test has {test_classes}; give both splits the same class folders"
        )


def read_folder(root: Path) -> Decoded:
    """Decode an image-folder tree; images of another size are resized to 32x32 with a warning."""
    check_folder(root)
    classes = [p.name for p in _class_dirs(root / "train")]
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in ("train", "test"):
        images, labels, n_resized = [], [], 0
        for label, name in enumerate(classes):
            files = _image_files(root / split / name)
            if not files:
                raise DataError(
                    f"no images in {root / split / name} (looked for {sorted(IMAGE_SUFFIXES)}); "
                    "add images or remove the empty class folder from both splits"
                )
            for path in files:
                pixels, resized = load_image(path)
                images.append(pixels)
                n_resized += resized
            labels += [label] * len(files)
        if n_resized:
            log.warning(
                "%d of %d %s images in %s were not 32x32 and were resized",
                n_resized,
                len(images),
                split,
                root,
            )
        arrays[split] = (np.stack(images), np.asarray(labels, dtype=np.int64))
    return Decoded(*arrays["train"], *arrays["test"], classes)


def read_official(root: Path, download: bool, timeout_s: float) -> Decoded:
    """Read the official python-format batches through torchvision, downloading them if allowed.

    torchvision checks every file's MD5, so a truncated or tampered copy is refused.
    """
    from torchvision.datasets import CIFAR10

    folder = root / CIFAR10.base_folder
    archive = root / CIFAR10.filename
    probe = CIFAR10.__new__(CIFAR10)  # only to call its integrity check, without loading
    probe.root = str(root)
    local_hint = (
        "or point at a local copy: data.source=folder data.root=<folder with train/ and test/>, "
        "or data.root=<folder holding cifar-10-batches-py>"
    )
    if folder.exists() and not probe._check_integrity():
        raise DataError(
            f"the CIFAR-10 files in {folder} fail their integrity check (truncated or tampered): "
            f"delete {folder} and {archive} and download again"
        )
    if not folder.exists():
        if not download:
            raise DataError(f"no CIFAR-10 files in {folder}: set data.download=true, {local_hint}")
        _download(CIFAR10, root, archive, timeout_s, local_hint)
    train, test = (CIFAR10(str(root), train=flag, download=False) for flag in (True, False))
    return Decoded(
        np.ascontiguousarray(train.data),
        np.asarray(train.targets, dtype=np.int64),
        np.ascontiguousarray(test.data),
        np.asarray(test.targets, dtype=np.int64),
        list(train.classes),
    )


def _download(cifar10_cls, root: Path, archive: Path, timeout_s: float, local_hint: str) -> None:
    from torchvision.datasets.utils import check_integrity, download_and_extract_archive

    if archive.exists() and not check_integrity(str(archive), cifar10_cls.tgz_md5):
        raise DataError(
            f"{archive} fails its integrity check (truncated or tampered): delete it and try again"
        )
    root.mkdir(parents=True, exist_ok=True)
    # torchvision's urllib download has no timeout of its own: without one an offline
    # machine can hang for minutes on a connection that never answers.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        download_and_extract_archive(
            cifar10_cls.url, str(root), filename=cifar10_cls.filename, md5=cifar10_cls.tgz_md5
        )
    except (OSError, RuntimeError) as err:  # URLError, timeouts and bad MD5 all land here
        if archive.exists() and not check_integrity(str(archive), cifar10_cls.tgz_md5):
            archive.unlink()  # never leave a half-downloaded archive behind
        raise DataError(
            f"could not download CIFAR-10 from {cifar10_cls.url} ({err}): check the network, "
            f"{local_hint}"
        ) from err
    finally:
        socket.setdefaulttimeout(previous)
