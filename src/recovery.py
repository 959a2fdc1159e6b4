"""Surviving faults: resuming killed runs, stopping diverged ones, checkpoints that are never torn.

- `AtomicCheckpointIO` writes every checkpoint beside its target and renames it into place.
- `ResumeCheckpoint` keeps last.ckpt fresh: every epoch, inside long epochs, and on SIGTERM.
- `StopOnDivergence` stops a run whose training loss is NaN or infinite, naming the learning rate.
- `resume_checkpoint` finds what `resume=true` continues from.
"""

from __future__ import annotations

import io
import logging
import shlex
import signal
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from src.checkpoint import read_checkpoint
from src.errors import (
    CheckpointError,
    ConfigError,
    OutputError,
    TrainingDiverged,
    UserError,
    find_user_error,
)
from src.files import atomic_write
from src.run_folder import RunRecord

log = logging.getLogger(__name__)

# Exit statuses of a stopped run, as a shell reports a process killed by that signal.
EXIT_SIGTERM = 128 + signal.SIGTERM
EXIT_SIGINT = 128 + signal.SIGINT


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, atomic on every file system.

    Lightning stages a checkpoint in the system's temporary folder and moves it into place; when
    that folder is on another file system than the run (a local /tmp, a network run folder) the
    move is a copy, and a kill or a full disk during it leaves a truncated checkpoint (and a kill
    before it, a stray file in /tmp). Here the file is written beside its target, flushed to disk
    and renamed over it: a reader sees the old checkpoint or the new one, never part of one.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if not _is_local_file_protocol(path):  # remote storage: Lightning's own transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        try:
            for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed writer
                stale.unlink(missing_ok=True)
            # Serialised in memory first: torch's zip writer turns a failed write (a full disk)
            # into an obscure RuntimeError, where a plain write raises the OSError it is.
            buffer = io.BytesIO()
            torch.save(checkpoint, buffer)
            with atomic_write(path, "wb") as file:
                file.write(buffer.getbuffer())
        except OSError as err:
            raise OutputError.cannot_write(path, err) from err


class StopOnDivergence(L.Callback):
    """Stop training as soon as the training loss is NaN or infinite.

    Reading the loss on the host stalls a GPU's queue, so on a GPU it is read every
    `check_every_n_batches` training batches (default 20; every batch on the CPU, where it is
    free), with a flag on the device remembering any bad loss in between. It is also read
    before every checkpoint, so no checkpoint ever holds diverged weights.

    Args:
        lr: the configured learning rate (optimizer.lr), named in the error.
    """

    def __init__(self, lr: float, check_every_n_batches: int | None = None):
        self.lr, self.check_every_n_batches = lr, check_every_n_batches
        self._finite: torch.Tensor | None = None
        self._loss: torch.Tensor | None = None
        self._every = 1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finite = torch.ones((), dtype=torch.bool, device=pl_module.device)
        on_cpu = pl_module.device.type == "cpu"
        self._every = self.check_every_n_batches or (1 if on_cpu else 20)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None or self._finite is None:
            return
        self._loss = loss.detach()
        self._finite &= torch.isfinite(self._loss).all()
        if idx % self._every == 0:
            self._check(trainer)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._check(trainer)

    def _check(self, trainer: L.Trainer) -> None:
        if self._finite is None or bool(self._finite):
            return
        lr_now = trainer.optimizers[0].param_groups[0]["lr"]
        raise TrainingDiverged(
            f"training diverged: the loss became {float(self._loss):g} by epoch "
            f"{trainer.current_epoch}, step {trainer.global_step}, with optimizer.lr={self.lr:g} "
            f"(the schedule's rate at that step: {lr_now:.3g}); lower optimizer.lr"
        )


class ResumeCheckpoint(Checkpoint):
    """Keep `path` (the run's last.ckpt) fresh: the checkpoint `resume=true` continues from.

    Saved at the end of every epoch, inside long epochs every `every_minutes` of training (or
    every `every_n_steps` steps), and when SIGTERM (a scheduler's pre-emption warning) stops
    training. Lightning's ModelCheckpoint does not fit: in Lightning 2.6 its last.ckpt is only
    refreshed when the monitored metric improves, and a save at an epoch's last batch resumes
    without that epoch's validation.

    Lightning's SIGTERM handler stops training at the end of the current batch, or of the current
    validation batch, and saves nothing. A stop inside validation is deferred to the end of the
    validation pass, because a run resumed mid-validation would lose the batches already seen.
    """

    CLOCK_EVERY = 20

    def __init__(
        self, path: str, every_minutes: float | None = 30, every_n_steps: int | None = None
    ):
        self.path, self.every_minutes, self.every_n_steps = path, every_minutes, every_n_steps
        self._last_save = time.monotonic()
        self._last_save_step = 0
        self._sigterm_deferred = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_save = time.monotonic()
        self._last_save_step = trainer.global_step
        # Lightning restores the training loader's position (its state_dict) when it builds the
        # loader, but a scheduler that asks for trainer.estimated_stepping_batches (OneCycle)
        # makes it build the loader before the checkpoint is read, and the position is dropped
        # (Lightning issue #20550). Apply it here; our loader draws its order at the first batch.
        if trainer.fit_loop.restarting:
            trainer.fit_loop._load_combined_loader_states()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # the epoch-end save follows, after validation
        # At every multiple of every_n_steps that global_step passed: a training batch may hold
        # several optimizer steps (data.fetch_size), so it need not land on one.
        n = self.every_n_steps
        by_steps = bool(n) and trainer.global_step // n > self._last_save_step // n
        by_time = (
            self.every_minutes is not None
            and time.monotonic() - self._last_save >= self.every_minutes * 60
        )
        # Every rank must agree, or ranks would wait for each other's save forever. The step
        # count is the same on every rank; the clocks are not, so rank 0's decides, asked only
        # every CLOCK_EVERY fetches: a broadcast is a host sync of every rank (Lightning already
        # makes one per fetch for SIGTERM).
        if trainer.world_size > 1:
            by_time = idx % self.CLOCK_EVERY == 0 and trainer.strategy.broadcast(by_time)
        if by_steps or by_time:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.state.fn == TrainerFn.FITTING and trainer.received_sigterm:
            self._sigterm_deferred = True
            trainer._signal_connector.received_sigterm = False  # Lightning has no public setter

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._sigterm_deferred:
            self._sigterm_deferred = False
            trainer._signal_connector.received_sigterm = True  # stops after this validation

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn == TrainerFn.FITTING:
            self._save(trainer)
            log.warning("SIGTERM: saved %s at step %d", self.path, trainer.global_step)

    def _save(self, trainer: L.Trainer) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        # The full training state; saying so keeps Lightning from logging its default every save.
        trainer.save_checkpoint(self.path, weights_only=False)
        self._last_save = time.monotonic()
        self._last_save_step = trainer.global_step


def resume_checkpoint(run_dir: Path, had_run: bool, ckpt_path: str | None) -> str | None:
    """The checkpoint `resume=true` continues from: the run folder's last.ckpt.

    A folder where a run started but died before its first checkpoint trains from the start; a
    folder that never held a run means the user forgot `hydra.run.dir`.
    """
    if ckpt_path:
        raise ConfigError(
            f"resume=true and ckpt_path={ckpt_path} both given: resume=true continues the run in "
            "hydra.run.dir from its last.ckpt; drop one of them"
        )
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info("resuming from %s", last)
        return str(last)
    if not had_run:
        raise ConfigError(
            f"resume=true, but {run_dir} holds no earlier run: pass the folder of the run to "
            "resume, hydra.run.dir=<run folder>"
        )
    log.warning("%s has no checkpoint yet: training from the start", run_dir)
    return None


def check_resumable(path: str, model: L.LightningModule) -> None:
    """Refuse, with one line, a checkpoint that is unreadable or holds another network."""
    state = read_checkpoint(path)["state_dict"]
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    if found != expected:
        differ = sorted(set(found.items()) ^ set(expected.items()))[0][0]
        raise CheckpointError(
            f"checkpoint {path} holds another network than this run builds (first difference: "
            f"{differ}): resume with the same model overrides as the run that wrote it"
        )


def failure_status(err: BaseException) -> str:
    """The metrics.json status of a run that ended with `err`."""
    if isinstance(err, TrainingDiverged):
        return "diverged"
    # SIGTERMException and Lightning's exit after Ctrl-C are SystemExits raised inside fit.
    if isinstance(err, (KeyboardInterrupt, SystemExit)):
        return "interrupted"
    return "failed"


def interrupted_exit_status(err: BaseException) -> int | None:
    """The exit status a shell gives a process stopped by that signal (SIGTERM, Ctrl-C).

    Lightning ends a SIGTERM-stopped fit with a SystemExit of status 0, which a scheduler or a
    sweep would take for success.
    """
    if isinstance(err, SIGTERMException):
        return EXIT_SIGTERM
    # Lightning turns Ctrl-C inside fit into SystemExit(1); outside fit it is KeyboardInterrupt.
    if isinstance(err, (KeyboardInterrupt, SystemExit)):
        return EXIT_SIGINT
    return None


def record_failure(record: RunRecord, err: BaseException, cfg: DictConfig, wall_s: float) -> None:
    """Say in metrics.json how a run ended (failed, diverged, interrupted) and how to go on."""
    status = failure_status(err)
    # Hydra's instantiate wraps errors raised in constructors: record the user's mistake itself.
    user_error = find_user_error(err)
    error = str(user_error) if user_error else f"{type(err).__name__}: {err}"
    values: dict[str, Any] = {"status": status, "error": error}
    if status == "diverged":
        values["lr"] = cfg.optimizer.lr
    if status == "interrupted":
        run_dir = HydraConfig.get().runtime.output_dir
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")]
        by = "SIGTERM" if isinstance(err, SIGTERMException) else "Ctrl-C"
        values["error"] = f"interrupted by {by}"
        values["resume_command"] = "python -m src.train " + shlex.join(
            [*overrides, "resume=true", f"hydra.run.dir={run_dir}"]
        )
        log.warning("%s; to continue: %s", values["error"], values["resume_command"])
    try:
        record.update(**values, wall_time_s=round(wall_s, 2))
    except UserError as write_err:  # a full disk must not hide the error that ended the run
        log.warning("%s", write_err)
