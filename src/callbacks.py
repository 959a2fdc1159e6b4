"""Small Lightning callbacks of our own."""

from __future__ import annotations

import time

import lightning as L
import torch


class EpochSeed(L.Callback):
    """Reseed torch's global generator at every epoch start from (seed, epoch).

    Augmentation and dropout draw from that generator; reseeding per epoch makes each epoch a
    function of the weights, the seed and the epoch number, so a run resumed from an epoch
    checkpoint ends with exactly the numbers of an uninterrupted run.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.manual_seed(self.seed * 1_000_003 + trainer.current_epoch + 1)


class EpochTimer(L.Callback):
    """Log each training epoch's wall time (validation included) as `time/epoch_s`.

    Reproduction estimates for runs not made yet are derived from these measured times.
    """

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("time/epoch_s", time.perf_counter() - self.started)
