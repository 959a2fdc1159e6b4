"""The studies' figures redrawn from the recorded runs: accuracy against a conv width (seed 000's
width sweep, seed 001's c1) and per-class accuracy, ours (mean ± sd over seeds) beside theirs.
A row without runs gets no bar of ours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from src.plots import save_png
from src.studies.rows import CLASSES, FIGURES, ROWS
from src.studies.tables import NO_PER_CLASS, mean_sd, per_class_runs, runs_of

THEIRS, OURS = "#8c959f", "#0969da"


def _bars(ax, x: np.ndarray, width: float, theirs: list, ours: list) -> None:
    """Published bars left, ours right with ±1 sd error bars; None draws no bar."""
    shown = [(xi, v) for xi, v in zip(x, theirs, strict=True) if v is not None]
    ax.bar(
        [xi - width / 2 for xi, _ in shown],
        [v for _, v in shown],
        width,
        color=THEIRS,
        label="published (one run)",
    )
    mine = [(xi, *v) for xi, v in zip(x, ours, strict=True) if v is not None]
    ax.bar(
        [m[0] + width / 2 for m in mine],
        [m[1] for m in mine],
        width,
        yerr=[m[2] for m in mine],
        capsize=3,
        color=OURS,
        label="ours: mean ± sd over seeds",
    )


def _ours(accs: list[float]) -> tuple[float, float] | None:
    if not accs:
        return None
    return mean_sd(accs) if len(accs) > 1 else (accs[0], 0.0)


def width_figure(figure_key: str, results: list[dict]) -> Figure:
    """Accuracy against the swept width: every row whose point is on this figure."""
    title, axis = FIGURES[figure_key]
    rows = sorted((r for r in ROWS if r.point and r.point[0] == figure_key), key=lambda r: r.point)
    x = np.arange(len(rows))
    figure = Figure(figsize=(8, 4.2))
    ax = figure.subplots()
    ours = [_ours([r["test_acc"] for r in runs_of(row, results)]) for row in rows]
    _bars(ax, x, 0.38, [row.published[0][1] for row in rows], ours)
    # Further published runs of the same network (seed 001's runs 4 to 6) as points.
    for xi, row in zip(x, rows, strict=True):
        for who, value in row.published[1:]:
            ax.plot(xi - 0.19, value, "k_", markersize=14)
            ax.annotate(
                who, (xi - 0.19, value), textcoords="offset points", xytext=(6, -3), fontsize=7
            )
    ax.set_xticks(x, [str(row.point[1]) for row in rows])
    ax.set_xlabel(axis)
    ax.set_ylabel("test accuracy %")
    low = min(
        [v for row in rows for _, v in row.published] + [o[0] - o[1] for o in ours if o], default=0
    )
    ax.set_ylim(max(0, low - 8), None)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return figure


def per_class_figure(results: list[dict]) -> Figure:
    """One panel per study that published per-class accuracies."""
    rows = [row for row in ROWS if row.per_class]
    figure = Figure(figsize=(9, 2.8 * len(rows)))
    x = np.arange(len(CLASSES))
    for ax, row in zip(figure.subplots(len(rows), 1, squeeze=False)[:, 0], rows, strict=True):
        runs = per_class_runs(row, results)
        ours = [_ours([run[i] for run in runs]) for i in range(len(CLASSES))]
        _bars(ax, x, 0.38, list(row.per_class), ours)
        ax.set_xticks(x, CLASSES, fontsize=8)
        ax.set_ylabel("test accuracy %")
        state = f"ours over {len(runs)} seeds" if runs else NO_PER_CLASS
        ax.set_title(f"{row.study}: per class ({state})", fontsize=10)
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return figure


def draw_all(results: list[dict], folder: Path) -> list[Path]:
    """Every figure, as PNG files in `folder` (the docs show them)."""
    paths = [
        save_png(width_figure(key, results), folder / f"reproduce_{key}.png") for key in FIGURES
    ]
    if any(row.per_class for row in ROWS):
        paths.append(save_png(per_class_figure(results), folder / "reproduce_per_class.png"))
    return paths
