"""Shared fixtures: tiny synthetic data sets (both sources), config composition, real-data paths.

The synthetic images are learnable (each class has its own colour and stripe direction) so a
tiny run gets well above chance in a few steps, which lets tests assert on accuracy.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from filelock import FileLock
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from PIL import Image

from src.logs import quiet_library_noise
from src.resolvers import register_resolvers

# What the entry points do first: tests compose and resolve configs without going through them.
register_resolvers()
quiet_library_noise()

# A shell starts background jobs with SIGINT ignored, and so would every process they start: the
# Ctrl-C tests need Python's own handler here and in the commands they run (which get SIGINT's
# default back at exec once this process handles it).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_COPY = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CLASSES = ["cat", "dog", "ship"]
# CIFAR-10's classes in label order (which is also alphabetical order).
OFFICIAL_CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()


def synthetic_images(n: int, label: int, rng: np.random.Generator) -> np.ndarray:
    """n noisy 32x32 RGB images whose colour and stripes depend on the label."""
    base = np.zeros((32, 32, 3), np.float32)
    base[..., label % 3] = 160
    stripes = (np.arange(32) // 4 % 2 * 60).astype(np.float32)
    base += stripes[:, None, None] if label % 2 else stripes[None, :, None]
    noise = rng.normal(0, 25, (n, 32, 32, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def make_folder_tree(root: Path, n_train: int = 40, n_test: int = 10, classes=CLASSES) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, pixels in enumerate(synthetic_images(n, label, rng)):
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


def make_official_batches(root: Path, n_per_batch: int = 30) -> Path:
    """Fake files in the official python format (cifar-10-batches-py), 10 classes."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(n: int) -> dict:
        labels = rng.integers(0, 10, n)
        images = np.stack([synthetic_images(1, int(y), rng)[0] for y in labels])
        return {"data": images.transpose(0, 3, 1, 2).reshape(n, -1), "labels": labels.tolist()}

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as file:
            pickle.dump(batch(n_per_batch), file)
    with open(folder / "batches.meta", "wb") as file:
        pickle.dump({"label_names": OFFICIAL_CLASSES}, file)
    return folder


@pytest.fixture
def folder_data(tmp_path) -> Path:
    return make_folder_tree(tmp_path / "data")


@pytest.fixture
def official_data(tmp_path, monkeypatch) -> Path:
    """Fake official files, with torchvision's MD5 list pointed at them (they are not real)."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import calculate_md5

    root = tmp_path / "official"
    folder = make_official_batches(root)
    for attr in ("train_list", "test_list"):
        entries = [[name, calculate_md5(str(folder / name))] for name, _ in getattr(CIFAR10, attr)]
        monkeypatch.setattr(CIFAR10, attr, entries)
    meta = dict(CIFAR10.meta, md5=calculate_md5(str(folder / "batches.meta")))
    monkeypatch.setattr(CIFAR10, "meta", meta)
    return root


def tiny_overrides(tmp_path: Path, data_root: Path, source: str = "folder") -> list[str]:
    """Overrides that shrink any run to seconds on the CPU, writing only under tmp_path."""
    return [
        f"data.source={source}",
        f"data.root={data_root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.val_size=12",
        "data.batch_size=8",
        "data.fetch_size=16",  # two batches per training step of Lightning's loop
        "data.eval_batch_size=16",
        "trainer.max_epochs=2",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "threads=1",
    ]


def real_overrides(root: Path) -> list[str]:
    """Overrides for a run on the real copy at `root`, on the CPU, without a progress bar."""
    return [
        "data.source=folder",
        f"data.root={root}",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
    ]


def compose_config(name: str, overrides: list[str], run_dir: Path) -> DictConfig:
    """Compose a real config as the command line would, with Hydra's runtime set to run_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            name, overrides=[*overrides, f"hydra.run.dir={run_dir}"], return_hydra_config=True
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    return cfg


def run_cli(
    module: str,
    *overrides: str,
    cwd: Path = ROOT,
    timeout: int = 300,
    python_flags: Sequence[str] = (),
    **popen,
):
    """Run an entry point as a user would; returns the CompletedProcess (never raises).

    `python_flags` go to the interpreter (e.g. -X importtime), `popen` to subprocess.run (e.g.
    preexec_fn to limit the process)."""
    return subprocess.run(
        [sys.executable, *python_flags, "-m", module, *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The shared JPEG copy, unpacked once into the user cache; skips when it is absent."""
    if not SHARED_COPY.exists():
        pytest.skip(f"the real CIFAR-10 copy {SHARED_COPY} is absent (only on project machines)")
    target = Path.home() / ".cache" / "cifar10-lab"
    tree = target / "cifar10-jpeg"
    target.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target / "unpack.lock")):
        if not (tree / ".unpacked").exists():
            shutil.rmtree(tree, ignore_errors=True)
            with tarfile.open(SHARED_COPY) as archive:
                archive.extractall(target, filter="data")
            (tree / ".unpacked").touch()
    return tree


def run_entry(main, *argv: str, capsys) -> tuple[int, str]:
    """Run an entry point in this process as its command line would: (exit status, output)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    GlobalHydra.instance().clear()
    try:
        # As under `python -m`: Hydra finds conf/ beside the entry point's file.
        with (
            mock.patch.object(sys, "argv", ["prog", *argv]),
            mock.patch.dict(os.environ, {"HYDRA_MAIN_MODULE": "__main__"}),
        ):
            main()
        status = 0
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
        root.handlers, root.level = handlers, level  # Hydra's job logging points at captures
    captured = capsys.readouterr()
    return status, captured.out + captured.err
