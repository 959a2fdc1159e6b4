"""Time to a target test accuracy: the seeds' loop and recipe against cifar10-lab's fastest.

Training time only: the clock runs while the loop trains (fetching and transforming batches,
forward, backward, optimizer step) and stops for everything else: process start-up, building
the data set (cifar10-lab's one-time decode into its cache happens before, untimed), and the
test-set evaluations that detect the target. Both loops are evaluated on the whole test set
at the same fraction of an epoch, and the time is the clock at the first evaluation at or
above the target.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.trainer.states import TrainerFn

from benchmarks.common import build_net, compose_train, load_data
from benchmarks.loops import evaluate, seeds_loader, seeds_steps
from src.threads import set_threads
from src.training import build_model, build_trainer


class TrainClock(L.Callback):
    """Training time only: runs during training epochs, stops while validation runs.

    At every validation it records (training seconds so far, validation accuracy, training
    images seen so far).
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.images = 0
        self.evals: list[tuple[float, float, int]] = []
        self._since: float | None = None

    def _start(self) -> None:
        self._since = time.perf_counter()

    def _stop(self) -> None:
        if self._since is not None:
            self.seconds += time.perf_counter() - self._since
            self._since = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._stop()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.images += len(batch[1])

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        acc = float(trainer.callback_metrics["val/acc"])
        self.evals.append((self.seconds, acc, self.images))
        # Validation inside fit: training resumes (trainer.training is still False here).
        if trainer.state.fn == TrainerFn.FITTING:
            self._start()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop()


def summarize(evals: Sequence[tuple[float, float, int]], target: float, epoch: int) -> dict:
    """Time to the first evaluation at or above `target` (`epoch`: images per epoch), and the
    whole curve as [training seconds, accuracy %, epochs]."""
    curve = [[round(t, 2), round(acc, 2), round(images / epoch, 2)] for t, acc, images in evals]
    reached = next((point for point in curve if point[1] >= target), None)
    best = max(curve, key=lambda point: point[1])
    return {
        "reached": reached is not None,
        "time_s": reached[0] if reached else None,
        "accuracy": (reached or best)[1],
        "epochs": (reached or best)[2],
        "curve": curve,
    }


def seeds_time_to_accuracy(
    base: Sequence[str],
    target: float,
    eval_every: float,
    max_epochs: int,
    output_dir: Path,
    seed: int = 0,
    lr: float = 0.001,
) -> dict:
    """The seeds' loop (tutorial pipeline and recipe, batch 4; the network of `base`'s model and
    learning rate `lr`) until the test accuracy reaches `target`, evaluated every `eval_every`
    epochs with the clock stopped."""
    cfg = compose_train([*base, f"seed={seed}"], output_dir)
    set_threads(cfg.threads)
    dm = load_data(cfg)  # only its test split: the evaluation, outside the clock
    torch.manual_seed(seed)
    net = build_net(cfg, dm.num_classes)
    loader = seeds_loader(cfg)
    every = max(1, round(eval_every * len(loader)))
    evals: list[tuple[float, float]] = []
    seconds, since = 0.0, time.perf_counter()
    for step, _ in enumerate(seeds_steps(net, loader, max_epochs, lr), start=1):
        if step % every:
            continue
        seconds += time.perf_counter() - since
        acc = evaluate(net, dm.test_images, dm.test_labels, (0.5,) * 3, (0.5,) * 3)
        evals.append((seconds, acc, step * loader.batch_size))
        if evals[-1][1] >= target:
            break
        since = time.perf_counter()
    return {
        "recipe": "the tutorial's loop: torchvision data set, ToTensor + Normalize per image, "
        f"DataLoader with 2 workers, batch 4, SGD lr {lr:g} momentum 0.9, {cfg.model.name} net",
        **summarize(evals, target, len(loader.dataset)),
    }


def lab_time_to_accuracy(
    base: Sequence[str],
    recipe: Sequence[str],
    target: float,
    eval_every: float,
    output_dir: Path,
) -> dict:
    """cifar10-lab's recipe `recipe` (through its own Trainer) until the test accuracy reaches
    `target`. The test split serves as the validation split (data.val_from=test) so Lightning's
    validation, every `eval_every` epochs with the clock stopped, is the test evaluation."""
    overrides = [
        *base,
        *recipe,
        "data.val_from=test",
        "~callbacks.model_checkpoint",  # checkpoints are not training
        "~callbacks.resume_checkpoint",
    ]
    cfg = compose_train(overrides, output_dir)
    L.seed_everything(cfg.seed, verbose=False)
    set_threads(cfg.threads)
    dm = load_data(cfg)
    model = build_model(cfg, dm)
    clock = TrainClock()
    stop = EarlyStopping("val/acc", mode="max", stopping_threshold=target, patience=10**9)
    batches = dm.fetching.batches  # training batches (optimizer steps) per epoch
    trainer = build_trainer(
        cfg,
        [clock, stop],
        val_check_interval=max(1, round(eval_every * batches)),
        check_val_every_n_epoch=None,  # every val_check_interval batches, across epochs
        enable_checkpointing=False,
    )
    trainer.fit(model, datamodule=dm)
    return {"recipe": " ".join(recipe), **summarize(clock.evals, target, len(dm.train_idx))}
