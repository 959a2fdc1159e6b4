"""Fetching: how the training batches of an epoch reach Lightning's loop, several at a time.

Lightning's loop costs about a millisecond of Python per batch it handles, as much as a whole
batch-4 step of the tutorial net on the CPU (profile in the speed guide). So the training loader
hands it `per_fetch` consecutive batches at once (a fetch of up to data.fetch_size images) and the
Classifier takes one optimizer step per batch of it: the steps (their images, order and count)
stay those of batches of data.batch_size, whatever the fetch.

This module is the one place that knows it. The data module plans one `Fetching` per fit, from
its settings and the Trainer's counters, and everything else asks that object: the loader (what
to yield), the Classifier (the images of one step, the run's steps for schedules), the
augmentation (which step a batch is), the benchmarks and src.reproduce.

Lightning's own counters keep their meaning: trainer.limit_train_batches, log_every_n_steps and a
whole-number val_check_interval count batches (optimizer steps), as for any LightningModule.
Lightning itself counts fetches, so `count_in_fetches` hands it the same values in fetches: the
loader stops after limit_train_batches batches (mid-fetch if need be), and fetches are made
small enough that every validation falls between two of them.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

from src.errors import ConfigError


@dataclass(frozen=True)
class BatchCounters:
    """Lightning's counters as the user set them on the Trainer, in batches."""

    limit_train_batches: int | float = 1.0
    val_check_interval: int | float | None = 1.0  # None: a time-based interval (not ours)
    log_every_n_steps: int = 50
    across_epochs: bool = False  # check_val_every_n_epoch=None: val_check_interval spans epochs
    validating: bool = True  # limit_val_batches > 0

    @classmethod
    def of(cls, trainer) -> BatchCounters:
        interval = trainer.val_check_interval
        return cls(
            limit_train_batches=trainer.limit_train_batches,
            val_check_interval=interval if isinstance(interval, (int, float)) else None,
            log_every_n_steps=trainer.log_every_n_steps,
            across_epochs=trainer.check_val_every_n_epoch is None,
            validating=trainer.limit_val_batches != 0,
        )

    def batches(self, epoch_batches: int) -> int:
        """Training batches per epoch under limit_train_batches (a count, or a fraction)."""
        limit = self.limit_train_batches
        if isinstance(limit, int):
            return min(epoch_batches, limit)
        return max(1, int(epoch_batches * limit)) if limit > 0 else 0

    def validate_every(self, batches: int) -> int | None:
        """Training batches between validations inside an epoch; None: only at its end."""
        interval = self.val_check_interval
        if isinstance(interval, int):
            if interval > batches and not self.across_epochs and self.validating:
                raise ConfigError(
                    f"trainer.val_check_interval={interval} counts training batches, and an "
                    f"epoch has {batches} here: use at most {batches}, a fraction of the epoch, "
                    "or trainer.check_val_every_n_epoch=null to count across epochs"
                )
            return interval
        if interval is None or interval >= 1.0:
            return None
        return max(1, int(batches * interval))  # Lightning's rule for a fraction of the epoch


@dataclass(frozen=True)
class Fetching:
    """The training batches of one epoch on this rank, as fetches of whole batches.

    batch_size: images per optimizer step on this rank (data.batch_size over the DDP ranks).
    per_fetch: batches per fetch (the last fetch of an epoch may hold fewer).
    batches: batches, so optimizer steps, per epoch (after trainer.limit_train_batches).
    """

    batch_size: int
    per_fetch: int
    batches: int

    @classmethod
    def plan(
        cls,
        images: int,
        batch_size: int,
        fetch_size: int | None = None,
        *,
        world_size: int = 1,
        drop_last: bool = False,
        counters: BatchCounters = BatchCounters(),
    ) -> Fetching:
        """`images` per epoch on this rank in batches of the global `batch_size`, fetched
        `fetch_size` images at a time (None: one batch per fetch)."""
        if batch_size % world_size:
            raise ConfigError(
                f"data.batch_size={batch_size} is the batch of all {world_size} DDP ranks "
                f"together and must split evenly between them: use a multiple of {world_size}"
            )
        size = batch_size // world_size
        epoch = images // size if drop_last else -(-images // size)
        batches = counters.batches(epoch)
        # As many whole batches as fit in fetch_size images, at least one.
        per_fetch = max(1, (fetch_size or batch_size) // batch_size)
        every = counters.validate_every(batches)
        if every:
            # A validation can only come between fetches: each must end on one. Counted across
            # epochs, the epoch's end (a short last fetch) must fall on a fetch boundary too.
            span = math.gcd(every, batches) if counters.across_epochs else every
            per_fetch = max(d for d in range(1, per_fetch + 1) if span % d == 0)
        return cls(size, per_fetch, batches)

    @property
    def fetches(self) -> int:
        """Fetches per epoch: the training batches Lightning's loop counts."""
        return -(-self.batches // self.per_fetch)

    def first_batch(self, fetch: int) -> int:
        """The epoch's index of the first batch of the `fetch`-th fetch (from 0)."""
        return fetch * self.per_fetch

    def total_steps(self, max_epochs: int, max_steps: int = -1) -> int:
        """Optimizer steps of a whole run (the length of a schedule)."""
        total = self.batches * max_epochs
        return min(total, max_steps) if max_steps > 0 else total


# The counters each Trainer was given by its user, before count_in_fetches rewrote them: a
# Trainer that fits again (or a data module set up twice) translates from the user's values.
_USER_COUNTERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def user_counters(trainer) -> BatchCounters:
    """The Trainer's counters as its user set them, in batches."""
    if trainer not in _USER_COUNTERS:
        _USER_COUNTERS[trainer] = BatchCounters.of(trainer)
    return _USER_COUNTERS[trainer]


def count_in_fetches(trainer, fetching: Fetching, counters: BatchCounters) -> None:
    """Give Lightning's loop, which counts fetches, the user's counters in fetches."""
    trainer.limit_train_batches = fetching.fetches  # the loader already stops at the limit
    every = counters.validate_every(fetching.batches)
    if every:
        trainer.val_check_interval = every // fetching.per_fetch  # a whole number (see plan)
    if counters.log_every_n_steps:
        # About every n batches, at most once a fetch (exactly every n where fetches divide n).
        trainer.log_every_n_steps = max(1, counters.log_every_n_steps // fetching.per_fetch)
