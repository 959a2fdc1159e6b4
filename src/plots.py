"""Figures every tool shares: the confusion matrix and the grid of predictions.

Built on `matplotlib.figure.Figure` (no pyplot), so drawing needs no display and keeps no global
state: the same figure goes to TensorBoard (as pixels) or to a PNG file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

RIGHT, WRONG = "#1a7f37", "#cf222e"  # green, red


def save_png(figure: Figure, path: Path, dpi: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def figure_pixels(figure: Figure, dpi: int = 100) -> np.ndarray:
    """The figure drawn once, as H x W x 3 uint8 (for TensorBoard). Not cropped to its tight
    bounding box as save_png's files are: that draws it twice and then encodes a PNG to decode,
    which made the pictures most of a short run's fixed cost (a fused group pays it per member)."""
    figure.set_dpi(dpi)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def spread(total: int, n: int) -> list[int]:
    """`n` indices spread evenly over range(total), so a sorted set shows every class."""
    return np.unique(np.linspace(0, total - 1, min(n, total)).round().astype(int)).tolist()


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """Counts in each cell (rows: true class, columns: predicted); colour: share of the row."""
    confusion = np.asarray(confusion, dtype=np.int64)
    shares = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    n = len(class_names)
    size = 2.5 + 0.55 * n
    figure = Figure(figsize=(size + 1, size), layout="tight")
    ax = figure.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(confusion) / max(confusion.sum(), 1) * 100
    ax.set_title(f"{title}: {accuracy:.2f}% of {confusion.sum():,}")
    for true in range(n):
        for pred in range(n):
            ax.text(
                pred,
                true,
                f"{confusion[true, pred]:,}",
                ha="center",
                va="center",
                fontsize=7 if confusion.max() >= 1000 else 8,
                color="white" if shares[true, pred] > 0.5 else "black",
            )
    return figure


def prediction_grid_figure(
    images: np.ndarray,
    class_names: Sequence[str],
    preds: Sequence[int],
    labels: Sequence[int] | None = None,
    probs: Sequence[float] | None = None,
    columns: int = 8,
) -> Figure:
    """Images (N x H x W x 3 uint8) titled "predicted (true)", green when right, red when wrong.

    Without labels the title is the prediction and its probability, in black. One mosaic in one
    axes, the titles in the gaps above the tiles: a subplot per image took half a second to lay
    out, at the end of every run.
    """
    n, h, w = images.shape[:3]
    rows = -(-n // columns)
    gap, pad = h // 3, max(w // 16, 1)  # title space above each tile, space beside it
    cell_h, cell_w = h + gap, w + pad
    mosaic = np.full((rows * cell_h, columns * cell_w - pad, 3), 255, dtype=np.uint8)
    inch = columns * 1.3 / mosaic.shape[1]  # 1.3 inches per column, square pixels
    figure = Figure(figsize=(mosaic.shape[1] * inch, mosaic.shape[0] * inch))
    axis = figure.add_axes((0, 0, 1, 1))
    axis.axis("off")
    for i in range(n):
        top, left = (i // columns) * cell_h + gap, (i % columns) * cell_w
        mosaic[top : top + h, left : left + w] = images[i]
        pred = class_names[preds[i]]
        if labels is not None:
            right = preds[i] == labels[i]
            title, colour = f"{pred} ({class_names[labels[i]]})", RIGHT if right else WRONG
        else:
            title, colour = f"{pred} {probs[i]:.0%}" if probs is not None else pred, "black"
        axis.text(left + w / 2, top - gap / 2, title, color=colour, fontsize=7, ha="center",
                  va="center")  # fmt: skip
    axis.imshow(mosaic, interpolation="nearest", aspect="equal")
    return figure
