"""Small Lightning callbacks of our own."""

from __future__ import annotations

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
