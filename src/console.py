"""What a run shows people: the layer table at its start, a line per epoch, the results table."""

from __future__ import annotations

import io
import logging

import lightning as L
from rich.console import Console, RenderableType
from rich.table import Table

console = Console()
log = logging.getLogger(__name__)
EPOCH_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "time/epoch_s")


def show(renderable: RenderableType | str) -> None:
    """Print to the console, and as plain text to the run's log, which keeps what was shown."""
    console.print(renderable)
    plain = Console(file=io.StringIO(), width=max(console.width, 80), color_system=None)
    plain.print(renderable)
    from src.run import to_log_file  # here: src.run -> src.models -> this module

    to_log_file(plain.file.getvalue().rstrip(), __name__)


def print_layer_summary(name: str, rows: list[tuple[str, tuple, int]], total: int) -> None:
    table = Table(title=f"{name}: layers", title_justify="left")
    table.add_column("layer")
    table.add_column("output shape", justify="right")
    table.add_column("parameters", justify="right")
    for layer, shape, params in rows:
        table.add_row(layer, " x ".join(map(str, shape)), f"{params:,}")
    table.add_row("total", "", f"{total:,}", style="bold")
    show(table)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def print_results(metrics: dict) -> None:
    """The end-of-run table: accuracies, per-class test accuracy, size, time, where files are."""
    table = Table(title="result", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    if "val/acc_best" in metrics:
        table.add_row("best val accuracy", _percent(metrics["val/acc_best"]))
    table.add_row("test accuracy", _percent(metrics.get("test/acc")), style="bold")
    for name, acc in metrics.get("test/acc_per_class", {}).items():
        table.add_row(f"  {name}", _percent(acc))
    if "test/loss" in metrics:
        table.add_row("test loss", f"{metrics['test/loss']:.4f}")
    if "params" in metrics:
        table.add_row("parameters", f"{metrics['params']:,}")
    if "wall_time_s" in metrics:
        table.add_row("wall time", f"{metrics['wall_time_s']:.1f} s")
    if "run_dir" in metrics:
        table.add_row("run folder", metrics["run_dir"])
    show(table)


def log_epoch_line(trainer: L.Trainer) -> None:
    """One line with the epoch's metrics, in the run's log, and on the console when there is no
    progress bar (the bar shows them there). Called last at an epoch's end, once the epoch's
    training metrics are logged (Classifier.on_train_epoch_end)."""
    if trainer.sanity_checking or not trainer.is_global_zero:
        return
    metrics = trainer.callback_metrics
    of = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
    values = ", ".join(f"{key} {float(metrics[key]):.4g}" for key in EPOCH_KEYS if key in metrics)
    line = f"epoch {trainer.current_epoch + 1}{of}: {values}"
    if trainer.progress_bar_callback is None:
        log.info("%s", line)
    else:
        from src.run import to_log_file  # here: src.run -> src.models -> this module

        to_log_file(line, __name__)
