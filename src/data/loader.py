"""Batches indexed straight from in-memory tensors: no per-sample Python, no worker processes."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from src.data.fetching import Fetching


def pixels_to_float(images: Tensor, hwc: bool = False) -> Tensor:
    """uint8 images -> float32 in [0, 1], channels first: what the Classifier takes (it
    normalises them itself). hwc: `images` are N x H x W x 3, as cached and as read from files."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    return (images.permute(0, 3, 1, 2) if hwc else images).float().div_(255)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's random numbers (its data order; dropout's, see EpochSeed)."""
    return seed * 1_000_003 + epoch


class EpochShuffle:
    """Index order for one epoch: a permutation seeded by (seed, epoch), sharded across ranks.

    Lightning calls `set_epoch` on a loader's `sampler` at each epoch start (also after a
    resume), so a resumed run sees the same order as an uninterrupted one.
    """

    def __init__(
        self, indices: Tensor, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1
    ):
        self.indices, self.shuffle, self.seed = indices, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> Tensor:
        indices = self.indices
        if self.shuffle:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            indices = indices[torch.randperm(len(indices), generator=generator)]
        # Every rank gets the same number of indices, or DDP ranks would wait on each other.
        per_rank = len(indices) // self.world_size
        return indices[self.rank : per_rank * self.world_size : self.world_size]

    def __len__(self) -> int:
        return len(self.indices) // self.world_size


class TensorBatchLoader:
    """Yields (images uint8 N x 3 x H x W, labels int64) from whole-split tensors, fetch by fetch
    as `fetching` plans them (src.data.fetching): `per_fetch` consecutive batches of
    `batch_size` at a time, as one tensor (the Classifier takes one optimizer step per batch of
    it), `fetching.batches` batches per epoch.

    `images` is N x H x W x 3 (as cached); batches come out channels-first as views of that
    layout, and stay on whatever device `images` lives on.

    The loader is resumable the way Lightning expects (`state_dict` / `load_state_dict`):
    Lightning stores its position in every checkpoint, and a run resumed from a mid-epoch
    checkpoint continues the epoch's order at the next unseen fetch.
    """

    # Lightning inspects `sampler` (calling its set_epoch) and `batch_sampler` of any loader.
    batch_sampler = None

    def __init__(
        self, images: Tensor, labels: Tensor, sampler: EpochShuffle, fetching: Fetching, pin=False
    ):
        self.images, self.labels, self.sampler = images, labels, sampler
        self.fetching = fetching
        # Each fetch in pinned (page-locked) memory, which the GPU copies asynchronously;
        # torch's host allocator reuses the pinned blocks of earlier fetches.
        self.pin = pin
        self.batches_yielded = 0  # fetches, in the current epoch
        self._resume_at = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches_yielded": self.batches_yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.set_epoch(state["epoch"])
        self._resume_at = state["batches_yielded"]

    def __len__(self) -> int:
        return self.fetching.fetches

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        # The order is drawn at the first batch, after Lightning's set_epoch for this epoch.
        order = self.sampler.order().to(self.images.device)
        # The epoch's batches only: whole ones under drop_last, and trainer.limit_train_batches
        size = self.fetching.batch_size
        order = order[: self.fetching.batches * size]
        fetch = size * self.fetching.per_fetch
        start, self._resume_at = self._resume_at, 0
        for i in range(start, len(self)):
            idx = order[i * fetch : (i + 1) * fetch]
            self.batches_yielded = i + 1
            images, labels = self.images[idx], self.labels[idx]
            if self.pin:
                images, labels = images.pin_memory(), labels.pin_memory()
            yield images.permute(0, 3, 1, 2), labels
