"""Classify image files or folders with a trained checkpoint.

python -m src.predict ckpt_path=outputs/runs/.../checkpoints/best.ckpt inputs=photos/
python -m src.predict ckpt_path=... 'inputs=[cat.jpg,data/test]'

Prints the most probable classes of every image and writes predictions.csv (path, pred, prob,
top_k, true, correct, error) and predictions.png to the run folder. A folder whose sub-folders
are named after the classes (like data/test) also gets its accuracy. In folders, only files with
an image extension are read. A file that is not a readable image gets its own error line; the
others go on.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig
from rich.table import Table

from src.checkpoint import load_classifier
from src.cli import cli, entry_point
from src.console import show
from src.data.loader import pixels_to_float
from src.data.sources import IMAGE_SUFFIXES, load_image
from src.errors import ConfigError, DataError
from src.models import Classifier
from src.plots import prediction_grid_figure, save_png
from src.threads import set_threads

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    path: Path
    true: str | None = None  # the class folder it sits in, inside a labelled input folder
    folder: Path | None = None  # that labelled input folder
    top: list[tuple[str, float]] | None = None  # (class, probability), most probable first
    error: str = ""
    pixels: np.ndarray | None = None

    @property
    def correct(self) -> bool | None:
        return None if self.true is None or not self.top else self.top[0][0] == self.true


def _images_under(folder: Path) -> list[Path]:
    """The image files below `folder`, by their extension (others are never opened), skipping
    hidden files and folders and the run folders of this project's tools (they hold .hydra/): a
    folder classified from inside gets Hydra's outputs/ in it, with this tool's own
    predictions.png, predictions.csv and predict.log."""
    images, others = [], 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [
            d for d in dirs if not d.startswith(".") and not Path(root, d, ".hydra").is_dir()
        ]
        for name in files:
            path = Path(root, name)
            if name.startswith("."):
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(path)
            else:
                others += 1
    if others:
        log.info("files in %s skipped as not images (by their extension): %d", folder, others)
    return sorted(images)


def collect_inputs(inputs: Sequence[str], class_names: Sequence[str]) -> list[Prediction]:
    """The files to classify; files in a folder whose sub-folders are all class names get the
    name of their sub-folder as their true class."""
    found = []
    for raw in inputs:
        path = Path(os.path.expanduser(str(raw)))
        if path.is_file():
            found.append(Prediction(path))
        elif path.is_dir():
            subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
            if subdirs and all(p.name in class_names for p in subdirs):
                for sub in subdirs:
                    found += [Prediction(f, sub.name, path) for f in _images_under(sub)]
            else:
                found += [Prediction(f) for f in _images_under(path)]
        else:
            raise DataError(
                f"input {path} does not exist: pass image files or folders, "
                "e.g. inputs=photos/ or 'inputs=[cat.jpg,photos/]'"
            )
    if not found:
        raise DataError(
            f"no image files in {list(inputs)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}): "
            "pass image files or folders that hold some"
        )
    return found


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no GPU is visible: use device=cpu or device=auto")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {name!r}: choose cpu, cuda or auto")
    return torch.device(name)


@torch.inference_mode()
def classify(
    model: Classifier,
    predictions: list[Prediction],
    top_k: int,
    batch_size: int,
    device: torch.device,
    keep_pixels: int = 0,
) -> None:
    """Fill in `top` (or `error`) of every prediction, reading the files batch by batch.

    The pixels of the first `keep_pixels` readable images stay in memory (for the grid).
    """
    model.to(device)
    kept = 0
    for start in range(0, len(predictions), batch_size):
        readable = []
        for item in predictions[start : start + batch_size]:
            try:
                item.pixels, _ = load_image(item.path)
                readable.append(item)
            except DataError as err:
                item.error = str(err)
                log.error("%s", err)
        if not readable:
            continue
        images = torch.from_numpy(np.stack([item.pixels for item in readable])).to(device)
        probs = model(pixels_to_float(images, hwc=True)).float().softmax(1)
        values, indices = probs.topk(top_k, dim=1)
        for item, vals, idxs in zip(readable, values.tolist(), indices.tolist(), strict=True):
            item.top = [(model.class_names[i], p) for i, p in zip(idxs, vals, strict=True)]
            if kept >= keep_pixels:
                item.pixels = None
            kept += 1


def write_csv(path: Path, predictions: list[Prediction]) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "pred", "prob", "top_k", "true", "correct", "error"])
        for item in predictions:
            pred, prob = item.top[0] if item.top else ("", "")
            top = " ".join(f"{name}:{p:.4f}" for name, p in item.top or [])
            correct = "" if item.correct is None else int(item.correct)
            prob = f"{prob:.4f}" if item.top else ""
            writer.writerow([item.path, pred, prob, top, item.true or "", correct, item.error])


def folder_accuracy(predictions: list[Prediction]) -> dict[Path, dict]:
    """For each labelled input folder: images classified, correct, and accuracy per class."""
    results: dict[Path, dict] = {}
    for item in predictions:
        if item.folder is None or item.correct is None:
            continue
        result = results.setdefault(item.folder, {"total": Counter(), "correct": Counter()})
        result["total"][item.true] += 1
        result["correct"][item.true] += item.correct
    for result in results.values():
        result["accuracy"] = sum(result["correct"].values()) / sum(result["total"].values()) * 100
    return results


def print_predictions(predictions: list[Prediction], limit: int) -> None:
    table = Table(title="predictions", title_justify="left")
    table.add_column("file", overflow="fold")
    table.add_column("top classes", no_wrap=True)
    if any(item.true for item in predictions):
        table.add_column("true")
    for item in predictions[:limit]:
        top = "  ".join(f"{name} {p:.1%}" for name, p in item.top) if item.top else ""
        cells = [str(item.path), top or "[red]not a readable image[/red]"]
        if item.true is not None:
            mark = "[green]" if item.correct else "[red]"
            cells.append(f"{mark}{item.true}[/]")
        table.add_row(*cells)
    show(table)
    if len(predictions) > limit:
        show(f"... and {len(predictions) - limit} more in predictions.csv")


def print_accuracy(results: dict[Path, dict]) -> None:
    for folder, result in results.items():
        total = sum(result["total"].values())
        table = Table(title=f"accuracy on {folder}", title_justify="left")
        table.add_column("class")
        table.add_column("images", justify="right")
        table.add_column("accuracy", justify="right")
        for name, n in sorted(result["total"].items()):
            table.add_row(name, f"{n:,}", f"{result['correct'][name] / n:.2%}")
        table.add_row("all", f"{total:,}", f"{result['accuracy']:.2f}%", style="bold")
        show(table)


def predict(cfg: DictConfig) -> dict:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    set_threads(cfg.threads)
    if not isinstance(cfg.top_k, int) or cfg.top_k < 1:
        raise ConfigError(f"top_k must be a positive integer, got {cfg.top_k!r}")
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {cfg.batch_size!r}")
    model = load_classifier(cfg.ckpt_path)
    inputs = list(cfg.inputs) if isinstance(cfg.inputs, ListConfig) else [cfg.inputs]
    predictions = collect_inputs(inputs, model.class_names)
    top_k = min(cfg.top_k, len(model.class_names))
    classify(model, predictions, top_k, cfg.batch_size, _device(cfg.device), cfg.grid_images)

    done = [item for item in predictions if item.top]
    if not done:  # each file's error is on the console already
        raise DataError(f"none of the {len(predictions)} files is a readable image")
    write_csv(out_dir / "predictions.csv", predictions)
    shown = done[: cfg.grid_images]
    labelled = all(item.true is not None for item in shown)
    figure = prediction_grid_figure(
        np.stack([item.pixels for item in shown]),
        model.class_names,
        [model.class_names.index(item.top[0][0]) for item in shown],
        [model.class_names.index(item.true) for item in shown] if labelled else None,
        [item.top[0][1] for item in shown],
    )
    save_png(figure, out_dir / "predictions.png")
    print_predictions(predictions, cfg.print_limit)
    accuracy = folder_accuracy(predictions)
    print_accuracy(accuracy)
    failed = len(predictions) - len(done)
    log.info(
        "classified %d of %d files (%d unreadable); predictions.csv and predictions.png in %s",
        len(done), len(predictions), failed, out_dir,
    )  # fmt: skip
    return {
        "classified": len(done),
        "failed": failed,
        "accuracy": {str(folder): result["accuracy"] for folder, result in accuracy.items()},
        "run_dir": str(out_dir),
    }


@entry_point
@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
@cli
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
