"""Classifier: the one LightningModule that trains, validates and tests every network."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from src.console import log_epoch_line
from src.data.datamodule import CIFAR10DataModule
from src.data.fetching import Fetching


class Classifier(L.LightningModule):
    """Cross-entropy classification with accuracy (overall and per class) for each stage.

    Inputs are float images in [0, 1]; the network's input normalisation (mean, std) lives in
    this module as buffers, so a checkpoint alone classifies raw pixels (eval, predict).
    Accuracies are logged in percent under `stage/name` keys.

    Args:
        net: the network (any nn.Module mapping N x 3 x H x W to N x classes).
        optimizer: factory `optimizer(params)` (a Hydra `_partial_` config).
        scheduler: factory `scheduler(optimizer, total_steps)` stepped every batch, or None.
        net_config: the config the net was built from, kept in checkpoints to rebuild it.

    Training batches may hold several optimizer steps: the data module's plan of fetches
    (`fetching`, src.data.fetching), asked for in `setup`, says how many images one step takes;
    the optimizer sees exactly the batches it would see one at a time. With a plain loader (no
    such plan) each training batch is one step.

    Optimization is manual (Lightning's `automatic_optimization = False`), because one training
    batch may hold several optimizer steps; it does what Lightning's automatic loop does for one
    optimizer: zero the gradients, backward (through the precision plugin), step, then step the
    schedule once per optimizer step.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        class_names: Sequence[str] = (),
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        net_config: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.automatic_optimization = False
        # channels_last: the weights too, not only the inputs; with NCHW weights the convolutions
        # of the tutorial net at batch 256 took 16% more CPU time (benchmarks, docs/speed.md).
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.class_names = list(class_names)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        n = len(self.class_names)
        # This rank's sums over the training epoch of (loss, correct predictions, images), from
        # which train/loss and train/acc are logged at its end. Three in-place adds per step: a
        # per-step self.log or torchmetrics update costs a large part of a batch-4 step of the
        # tutorial net on the CPU (benchmarks, docs/speed.md), and nothing here reads a value
        # back to the host (no device sync per step on a GPU). A plain float64 tensor, not a
        # buffer: DDP would overwrite every rank's buffers with rank 0's before each forward,
        # and bf16-true / 16-true would cast a buffer to 16 bits (32768 + 64 == 32768 there).
        self.train_sums = torch.zeros(3, dtype=torch.float64)
        self.val_acc = MulticlassAccuracy(n, average="micro")
        self.test_acc = MulticlassAccuracy(n, average="micro")
        self.val_confusion = MulticlassConfusionMatrix(n)
        self.test_confusion = MulticlassConfusionMatrix(n)
        # A buffer, not a metric object: it is saved in checkpoints and survives a resume. Kept
        # float32 whatever the training precision (see _apply).
        self.register_buffer("val_acc_best", torch.tensor(float("-inf")))
        # Filled at the end of each stage, for reports and metrics.json.
        self.val_confusion_best: Tensor | None = None
        self.test_results: dict = {}
        self.fetching: Fetching | None = None

    def setup(self, stage: str) -> None:
        # The data module has planned this fit's fetches (its own setup runs first).
        datamodule = self.trainer.datamodule
        self.fetching = datamodule.fetching if isinstance(datamodule, CIFAR10DataModule) else None

    def _apply(self, fn, recurse: bool = True):
        # bf16-true / 16-true convert the whole module (module.to(dtype)), which would round the
        # best accuracy to 16 bits (63.21 -> 63.25); it follows the module's device only.
        best = self.val_acc_best
        super()._apply(fn, recurse)
        device = self.mean.device
        self.val_acc_best = best.to(device=device, dtype=torch.float32)
        self.train_sums = self.train_sums.to(device)
        return self

    def forward(self, images: Tensor) -> Tensor:
        # In the network's dtype: bf16-true / 16-true cast the weights but not our float32 input.
        x = ((images - self.mean) / self.std).to(self.mean.dtype)
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(loss of each image, predictions, labels)."""
        images, labels = batch
        logits = self(images)
        losses = F.cross_entropy(
            logits, labels, label_smoothing=self.hparams.label_smoothing, reduction="none"
        )
        return losses, logits.argmax(1), labels

    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str) -> tuple[Tensor, Tensor]:
        losses, preds, labels = self._step(batch)
        self.log(
            f"{stage}/loss",
            losses.mean(),
            on_step=False,
            on_epoch=True,
            sync_dist=True,  # reduced once at epoch end, not every step
            batch_size=len(labels),
            prog_bar=True,
        )
        return preds, labels

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, labels = batch
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        size = self.fetching.batch_size if self.fetching else len(labels)
        max_steps = self.trainer.max_steps
        for step_batch in zip(images.split(size), labels.split(size), strict=True):
            if 0 < max_steps <= self.trainer.global_step:
                break  # trainer.max_steps counts optimizer steps, even inside a batch
            losses, preds, step_labels = self._step(step_batch)
            loss = losses.mean()
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            with torch.no_grad():
                self.train_sums[0] += losses.detach().sum().double()
                self.train_sums[1] += (preds == step_labels).sum()
                self.train_sums[2] += len(step_labels)
        # The last step's loss, for callbacks (a NaN anywhere in the batch carries on to it).
        return loss.detach()

    def validation_step(self, batch, batch_idx: int) -> None:
        preds, labels = self._eval_step(batch, "val")
        self.val_acc.update(preds, labels)
        self.val_confusion.update(preds, labels)

    def test_step(self, batch, batch_idx: int) -> None:
        preds, labels = self._eval_step(batch, "test")
        self.test_acc.update(preds, labels)
        self.test_confusion.update(preds, labels)

    # Accuracies are computed at epoch end rather than logged as metric objects, so they are
    # logged in percent, and per class, in one place.
    def on_train_epoch_end(self) -> None:
        # Summed over every rank (the all-reduce works in place: on a copy).
        sums = self.trainer.strategy.reduce(self.train_sums.clone(), reduce_op="sum")
        loss, correct, images = sums
        images = images.clamp(min=1)
        # The sums are over every rank already; sync_dist then averages equal values.
        self.log("train/loss", (loss / images).float(), sync_dist=True)
        self.log("train/acc", (correct / images * 100).float(), sync_dist=True)
        self.train_sums.zero_()
        log_epoch_line(self.trainer)

    def on_validation_epoch_end(self) -> None:
        acc = self.val_acc.compute() * 100
        confusion = self.val_confusion.compute()
        self.val_acc.reset()
        self.val_confusion.reset()
        if self.trainer.sanity_checking:
            return
        if acc > self.val_acc_best:
            self.val_acc_best.fill_(acc)
            self.val_confusion_best = confusion.cpu()
        self.log("val/acc", acc, prog_bar=True, sync_dist=True)
        self.log("val/acc_best", self.val_acc_best, prog_bar=True, sync_dist=True)
        self._log_per_class("val", confusion)

    def on_test_epoch_end(self) -> None:
        acc = self.test_acc.compute() * 100
        confusion = self.test_confusion.compute()
        self.test_acc.reset()
        self.test_confusion.reset()
        self.log("test/acc", acc, sync_dist=True)
        per_class = self._log_per_class("test", confusion)
        self.test_results = {"acc_per_class": per_class, "confusion": confusion.cpu()}

    def _log_per_class(self, stage: str, confusion: Tensor) -> dict[str, float]:
        per_class = confusion.diag() / confusion.sum(1).clamp(min=1) * 100
        values = {
            name: round(float(v), 4) for name, v in zip(self.class_names, per_class, strict=True)
        }
        for name, value in values.items():
            self.log(f"{stage}/acc_class/{name}", value, sync_dist=True)
        return values

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=self._total_steps())
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def _total_steps(self) -> int:
        """Optimizer steps in the whole run (for schedules)."""
        trainer = self.trainer
        if self.fetching is None:  # one step per training batch, as Lightning counts them
            return int(trainer.estimated_stepping_batches)
        return self.fetching.total_steps(trainer.max_epochs, trainer.max_steps)
