"""Small Lightning callbacks of our own."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import RichProgressBar

from src.data.loader import epoch_seed
from src.errors import ConfigError

log = logging.getLogger(__name__)


class EpochSeed(L.Callback):
    """Reseed torch's global generator at every epoch start from (seed, epoch, DDP rank).

    Dropout draws from that generator (augmentation has generators of its own, see
    src.data.augment.Draws); reseeding per epoch makes each epoch a function of the weights, the
    seed and the epoch number, so a run resumed from an epoch checkpoint ends with exactly the
    numbers of an uninterrupted run. Each DDP rank gets its own stream (rank 0 keeps the
    single-device one). Checkpoints carry every rank's generator state, so a run resumed from a
    mid-epoch checkpoint does too.
    """

    RANK_STRIDE = 7_919_993  # far apart from any (seed, epoch) of another rank

    def __init__(self, seed: int):
        self.seed = seed
        self._trainer: L.Trainer | None = None
        self._resumed_rng: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def epoch_seed(self, epoch: int, rank: int) -> int:
        # epoch + 1: a stream apart from the epoch's data order (EpochShuffle's)
        return epoch_seed(self.seed, epoch + 1) + rank * self.RANK_STRIDE

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.manual_seed(self.epoch_seed(trainer.current_epoch, trainer.global_rank))

    def state_dict(self) -> dict[str, Any]:
        state = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()  # this process's device
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return {"ranks": [state]}
        # Every rank saves a checkpoint together (only rank 0 writes it): gather all states.
        states: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(states, state)
        return {"ranks": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Applied when training starts: restoring happens before setup that may draw numbers.
        self._resumed_rng = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        saved, self._resumed_rng = self._resumed_rng, None
        if saved is None:
            return
        ranks = saved.get("ranks", [saved])  # checkpoints before DDP ranks were kept: rank 0's
        if trainer.global_rank >= len(ranks):
            return  # more ranks than the run that saved it: this rank starts afresh
        state = ranks[trainer.global_rank]
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar, redrawn at most `per_second` times a second.

    Lightning's own redraws the training bar and re-reads every logged metric after every
    batch; for the tutorial net at batch 4 that took longer than the training step itself
    (benchmarks, docs/speed.md).
    """

    def __init__(self, per_second: float = 4.0):
        super().__init__(refresh_rate=max(1, math.ceil(per_second)))
        self.interval = 1.0 / per_second
        self._drawn = -math.inf

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.monotonic()
        if now - self._drawn >= self.interval or batch_idx + 1 >= trainer.num_training_batches:
            self._drawn = now
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def progress_bar(enabled: bool, per_second: float = 4.0) -> ProgressBar | None:
    """The progress bar, or None when trainer.enable_progress_bar is off (Lightning refuses a
    progress bar callback then)."""
    return ProgressBar(per_second) if enabled else None


class OptunaPruning(L.Callback):
    """Report the validation accuracy to the run's Optuna trial after every epoch, and stop
    training when the study's pruner says the trial is hopeless.

    The trial is told it was pruned here, in the job's own process, through the study file that
    the sweeper shares with every job (hydra_plugins/cifar10_lab_sweeper); `pruned` tells
    src.train to record the run as pruned.
    """

    def __init__(self, trial: Any, monitor: str = "val/acc"):
        self.trial, self.monitor = trial, monitor
        self.pruned = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        prune = False
        if trainer.is_global_zero:  # one report per epoch, not one per DDP rank
            epochs_done = trainer.current_epoch + 1
            self.trial.report(float(value), epochs_done)
            prune = self.trial.should_prune()
        if not trainer.strategy.broadcast(prune):
            return
        self.pruned = trainer.should_stop = True
        if trainer.is_global_zero:
            from optuna.trial import TrialState

            self.trial.study.tell(self.trial, state=TrialState.PRUNED)
            log.info(
                "pruned: trial %d's %s %.2f after %d epochs is below what its pruner asks",
                self.trial.number,
                self.monitor,
                float(value),
                trainer.current_epoch + 1,
            )


def optuna_pruning(trial: int | None, monitor: str = "val/acc") -> OptunaPruning | None:
    """The pruning callback of an Optuna search's trial `trial` (optuna_trial, which the sweeper
    sets); None outside a search."""
    if trial is None:
        return None
    hydra = HydraConfig.get()
    if "study_name" not in hydra.sweeper:
        raise ConfigError(
            f"optuna_trial={trial} is set by the Optuna search (hydra/sweeper=optuna_study) for "
            "its own trials: leave it out"
        )
    from hydra_plugins.cifar10_lab_sweeper.study import job_trial

    return OptunaPruning(job_trial(hydra.sweeper, hydra.sweep.dir, trial), monitor)
