"""A callback that signals its own process at a chosen point, for the kill-and-resume tests.

Loaded into a real `python -m src.train` through an override
(`+callbacks.signal._target_=tests.signals.SignalAt ...`): the process then dies (SIGKILL) or is
asked to stop (SIGTERM) at exactly that training step, as it would by an outside kill there.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import lightning as L


class SignalAt(L.Callback):
    """Send `signal_name` to this process once, after the training batch that reaches step
    `step` (or after the first validation batch that follows it, with `during_validation`).

    A training batch may hold several optimizer steps (data.fetch_size), so the signal goes at
    the first batch end at or past `step`.
    """

    def __init__(self, step: int, signal_name: str = "SIGKILL", during_validation: bool = False):
        self.step, self.signum = step, getattr(signal, signal_name)
        self.during_validation = during_validation
        self.fired = False

    def _fire(self, trainer: L.Trainer) -> None:
        if trainer.global_step >= self.step and not self.fired:
            self.fired = True
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.during_validation:
            self._fire(trainer)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args) -> None:
        if self.during_validation and batch_idx == 0:
            self._fire(trainer)


def signal_at(step: int, name: str = "SIGKILL", during_validation: bool = False) -> str:
    """An override that makes the run signal itself after training step `step`."""
    args = f"step: {step}, signal_name: {name}, during_validation: {str(during_validation).lower()}"
    return f"+callbacks.signal={{_target_: tests.signals.SignalAt, {args}}}"


def exit_status(stopped_run: Callable[[], object], name: str) -> int:
    """The exit status of a run made in this process that a SignalAt stops with signal `name`:
    its SystemExit's code, with this process's handler for that signal put back (Lightning
    leaves its own in place, and ignores SIGINT after the first)."""
    signum = getattr(signal, name)
    handler = signal.getsignal(signum)
    try:
        stopped_run()
    except SystemExit as stop:
        return stop.code
    finally:
        signal.signal(signum, handler)
    raise AssertionError(f"the run ended without being stopped by {name}")
