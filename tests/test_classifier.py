"""The Classifier's epoch metrics: what it logs is what the steps saw."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from src.models import Classifier
from src.models.convnet import ConvNet


class StepRecorder(L.Callback):
    def __init__(self):
        self.losses, self.sizes = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.sizes.append(len(batch[1]))


def test_train_loss_and_accuracy_are_the_epoch_means_weighted_by_batch_size():
    torch.manual_seed(0)
    images, labels = torch.rand(13, 3, 32, 32), torch.randint(0, 3, (13,))
    net = ConvNet(channels=[4], kernel_size=3, num_classes=3)
    model = Classifier(
        net=net,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.0),  # weights stay put
        class_names=["a", "b", "c"],
    )
    recorder = StepRecorder()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        callbacks=[recorder],
    )
    # Batches of 5, 5 and 3: an unweighted mean of the three losses would differ.
    trainer.fit(model, DataLoader(TensorDataset(images, labels), batch_size=5))
    weighted = sum(x * n for x, n in zip(recorder.losses, recorder.sizes, strict=True)) / 13
    assert recorder.sizes == [5, 5, 3]
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(weighted, rel=1e-5)
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean() * 100
    assert float(trainer.callback_metrics["train/acc"]) == pytest.approx(float(accuracy))
