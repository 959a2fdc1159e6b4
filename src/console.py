"""Tables printed for people at the start and end of a run."""

from __future__ import annotations

import io

from rich.console import Console, RenderableType
from rich.table import Table

from src.run import to_log_file

console = Console()


def show(renderable: RenderableType | str) -> None:
    """Print to the console, and as plain text to the run's log, which keeps what was shown."""
    console.print(renderable)
    plain = Console(file=io.StringIO(), width=max(console.width, 80), color_system=None)
    plain.print(renderable)
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
