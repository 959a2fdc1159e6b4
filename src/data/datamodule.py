"""CIFAR10DataModule: the cached uint8 data set, its splits, fast loaders and batch augmentation."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from src.data.augment import Draws, get_augment, step_seed
from src.data.cache import CachedData, load_or_build
from src.data.fetching import Fetching, count_in_fetches, user_counters
from src.data.loader import EpochShuffle, TensorBatchLoader, pixels_to_float
from src.data.sources import check_folder, folder_fingerprint, read_folder, read_official
from src.errors import ConfigError

log = logging.getLogger(__name__)

SOURCES = ("torchvision", "folder")
NORMALIZATIONS = {"seed": ([0.5] * 3, [0.5] * 3)}  # "dataset" comes from the cache


def default_root() -> str:
    return os.environ.get("CIFAR10_LAB_DATA", "./data")


def default_cache_dir() -> str:
    return os.environ.get("CIFAR10_LAB_CACHE", str(Path.home() / ".cache" / "cifar10-lab"))


class CIFAR10DataModule(L.LightningDataModule):
    """CIFAR-10 with train / validation / test splits.

    Args:
        source: "torchvision" (official files, downloaded with their MD5 check) or "folder"
            (an image tree train/<class>/*, test/<class>/*).
        root: where the source lives (default: $CIFAR10_LAB_DATA, else ./data).
        cache_dir: where the decoded uint8 cache goes (default: $CIFAR10_LAB_CACHE, else
            ~/.cache/cifar10-lab).
        val_size: images held out of the training split for validation: a count, or a
            fraction in (0, 1). 0 means no validation.
        val_from: "train" (carve `val_size` from the training split) or "test" (seed 004's
            recipe: the test split doubles as validation, so it also picks the checkpoint).
        split_seed: the validation split is a function of this seed alone (default 0, the same
            split for every run, so seed repeats are scored on the same images).
        seed: the order of the training images (a new permutation per epoch from it).
        augment: training augmentation preset (see src.data.augment.PRESETS).
        augment_seed: seeds the augmentation's random parameters, with the DDP rank, the epoch
            and the step (see src.data.augment.Draws).
        normalize: "seed" (mean 0.5, std 0.5 as in the studies) or "dataset" (the training
            split's own mean and std).
        batch_size: images per optimizer step over all DDP ranks together (the global batch):
            each of N ranks takes batch_size / N of them, so trainer=ddp keeps the recipe's
            batch, step count, learning rate and schedule.
        on_device: keep the whole data set on the GPU when training on one; if false, each
            training fetch is copied from pinned host memory (asynchronously).
        fetch_size: training images handed to Lightning's loop at once, as whole batches of
            `batch_size` (at least one): the Classifier still takes one optimizer step per
            batch, so results do not depend on it; larger fetches spread Lightning's fixed cost
            per batch over more steps (see TensorBatchLoader).
    """

    def __init__(
        self,
        source: str = "torchvision",
        root: str | None = None,
        cache_dir: str | None = None,
        download: bool = True,
        download_timeout_s: float = 10.0,
        batch_size: int = 64,
        eval_batch_size: int = 1000,
        val_size: float = 5000,
        val_from: str = "train",
        split_seed: int = 0,
        seed: int = 0,
        augment: str = "none",
        augment_seed: int = 0,
        normalize: str = "seed",
        on_device: bool = True,
        drop_last: bool = False,
        fetch_size: int = 1024,
    ):
        super().__init__()
        if source not in SOURCES:
            raise ConfigError(f"unknown data.source {source!r}: choose one of {list(SOURCES)}")
        if normalize not in ("seed", "dataset"):
            raise ConfigError(f"unknown data.normalize {normalize!r}: choose 'seed' or 'dataset'")
        if val_from not in ("train", "test"):
            raise ConfigError(f"unknown data.val_from {val_from!r}: choose 'train' or 'test'")
        sizes = (
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
            ("fetch_size", fetch_size),
        )
        for name, value in sizes:
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"data.{name} must be a positive integer, got {value!r}")
        if val_size < 0:
            raise ConfigError(f"data.val_size must be >= 0 (a count or a fraction), got {val_size}")
        self.augment_fn, self.augment_seed = get_augment(augment), augment_seed
        self.source, self.download, self.download_timeout_s = source, download, download_timeout_s
        self.root = Path(os.path.expanduser(root or default_root())).resolve()
        self.cache_dir = Path(os.path.expanduser(cache_dir or default_cache_dir()))
        self.batch_size, self.eval_batch_size, self.drop_last = (
            batch_size,
            eval_batch_size,
            drop_last,
        )
        self.val_size, self.val_from, self.split_seed = val_size, val_from, split_seed
        self.seed = seed
        self.normalize, self.on_device = normalize, on_device
        self.fetch_size = fetch_size
        self.data: CachedData | None = None
        self.prepared: CachedData | None = None  # what prepare_data loaded, for setup to split
        self.fetching: Fetching | None = None  # planned once the splits are known

    # -- preparing ---------------------------------------------------------------------------

    def load(self) -> CachedData:
        """Decode the source into the cache on first use; later calls map the cached arrays."""
        if self.source == "folder":
            check_folder(self.root)
            description = {
                "source": "folder",
                "root": str(self.root),
                "files": folder_fingerprint(self.root),
            }
            return load_or_build(self.cache_dir, description, lambda: read_folder(self.root))
        description = {"source": "torchvision", "root": str(self.root)}
        return load_or_build(
            self.cache_dir,
            description,
            lambda: read_official(self.root, self.download, self.download_timeout_s),
        )

    def prepare_data(self) -> None:
        # Lightning calls this again before each test and validate: once loaded, the cache is
        # there (a folder's fingerprint alone reads all 60,000 file names).
        if self.data is None and self.prepared is None:
            self.prepared = self.load()

    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            self._load_splits()
        if self.fetching is None:
            self.fetching = self.plan_fetching()
        if self.trainer is not None and stage == "fit":
            counters = user_counters(self.trainer)
            self.fetching = self.plan_fetching(self.trainer.world_size, counters)
            count_in_fetches(self.trainer, self.fetching, counters)
        # Entry points call setup() before a Trainer exists, and Lightning calls it again once
        # the device is known: that second call moves the data set onto the GPU.
        if self.on_device and self.trainer is not None:
            device = self.trainer.strategy.root_device
            if device.type != "cpu" and self.train_images.device != device:
                for name in ("train_images", "train_labels", "test_images", "test_labels"):
                    setattr(self, name, getattr(self, name).to(device))

    def _load_splits(self) -> None:
        self.data = self.prepared if self.prepared is not None else self.load()
        self.classes = list(self.data.classes)
        self.mean, self.std = NORMALIZATIONS.get(self.normalize, (self.data.mean, self.data.std))
        self.train_images = torch.from_numpy(self.data.train_images)
        self.train_labels = torch.from_numpy(self.data.train_labels)
        self.test_images = torch.from_numpy(self.data.test_images)
        self.test_labels = torch.from_numpy(self.data.test_labels)
        self.train_idx, self.val_idx = self._split(len(self.train_labels))

    def _split(self, n_train: int) -> tuple[Tensor, Tensor]:
        if self.val_from == "test":
            return torch.arange(n_train), torch.empty(0, dtype=torch.long)
        n_val = int(round(self.val_size * n_train)) if 0 < self.val_size < 1 else int(self.val_size)
        if n_val >= n_train:
            raise ConfigError(
                f"data.val_size={self.val_size} leaves no training images (the training split has "
                f"{n_train}): use a smaller count or a fraction below 1"
            )
        generator = torch.Generator().manual_seed(self.split_seed)
        order = torch.randperm(n_train, generator=generator)
        return order[n_val:].sort().values, order[:n_val].sort().values

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    # -- loaders -----------------------------------------------------------------------------

    def plan_fetching(self, world_size: int = 1, counters=None) -> Fetching:
        """The training batches of one epoch on each of `world_size` ranks, as fetches, under
        the Trainer's `counters` (src.data.fetching.BatchCounters; none: a whole epoch)."""
        extra = {"counters": counters} if counters is not None else {}
        return Fetching.plan(
            len(self.train_idx) // world_size,
            self.batch_size,
            self.fetch_size,
            world_size=world_size,
            drop_last=self.drop_last,
            **extra,
        )

    def _loader(self, images: Tensor, labels: Tensor, indices: Tensor, train: bool):
        rank, world = (
            (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        )
        sampler = EpochShuffle(indices, shuffle=train, seed=self.seed, rank=rank, world_size=world)
        # Host memory the GPU copies from asynchronously (data kept off the GPU).
        pin = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        pin = pin and images.device.type == "cpu"
        if train:
            return TensorBatchLoader(images, labels, sampler, self.fetching, pin=pin)
        every = Fetching.plan(len(sampler), self.eval_batch_size)  # a batch at a time
        return TensorBatchLoader(images, labels, sampler, every, pin=pin)

    def train_dataloader(self):
        return self._loader(self.train_images, self.train_labels, self.train_idx, train=True)

    def val_dataloader(self):
        if self.val_from == "test":
            return self.test_dataloader()
        return self._loader(self.train_images, self.train_labels, self.val_idx, train=False)

    def test_dataloader(self):
        every = torch.arange(len(self.test_labels))
        return self._loader(self.test_images, self.test_labels, every, train=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """uint8 -> float in [0, 1] on the training device; augment training batches only."""
        images, labels = batch
        images = pixels_to_float(images)
        if self.augment_fn is not None and self.trainer is not None and self.trainer.training:
            images = self.augment_fn(images, self._draws(len(images), images.device))
        return images, labels

    def _draws(self, n: int, device: torch.device) -> Draws:
        """The random numbers of this training fetch: each of its batches draws from a generator
        keyed by its step in the epoch, so data.fetch_size does not change them."""
        trainer, size = self.trainer, self.fetching.batch_size
        # Fetches this epoch before this one (Lightning counts the fetch after this hook); also
        # right after a mid-epoch resume, where it restores the count with the loader's place.
        first = self.fetching.first_batch(trainer.fit_loop.epoch_loop.batch_progress.current.ready)
        seeds = [
            step_seed(self.augment_seed, trainer.global_rank, trainer.current_epoch, first + k)
            for k in range(-(-n // size))
        ]
        return Draws(n, device, seeds, size)
