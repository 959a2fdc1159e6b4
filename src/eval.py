"""Test a saved checkpoint: the same numbers `src.train` reports at its end.

python -m src.eval ckpt_path=outputs/runs/.../checkpoints/best.ckpt [data.root=...]
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from src.checkpoint import load_classifier
from src.cli import cli, entry_point
from src.console import print_results
from src.data.loader import pixels_to_float
from src.distributed import check_devices
from src.errors import DataError
from src.models import Classifier
from src.models.convnet import count_parameters
from src.plots import confusion_figure, prediction_grid_figure, save_png, spread
from src.run_folder import RunRecord
from src.threads import set_threads

log = logging.getLogger(__name__)

GRID_IMAGES = 32


def save_confusion_tables(
    out_dir: Path, confusion: torch.Tensor, class_names: Sequence[str]
) -> None:
    """per_class.csv (class, correct, total, accuracy in percent) and confusion.csv/.png."""
    counts = confusion.long().tolist()
    with open(out_dir / "per_class.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["class", "correct", "total", "accuracy"])
        for i, name in enumerate(class_names):
            correct, total = counts[i][i], sum(counts[i])
            writer.writerow([name, correct, total, f"{correct / max(total, 1) * 100:.2f}"])
    with open(out_dir / "confusion.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["true/predicted", *class_names])
        writer.writerows([name, *row] for name, row in zip(class_names, counts, strict=True))
    save_png(confusion_figure(confusion.numpy(), class_names, "test"), out_dir / "confusion.png")


@torch.inference_mode()
def save_prediction_grid(out_dir: Path, model: Classifier, images: torch.Tensor, labels) -> None:
    """predictions.png: test images (uint8 N x H x W x 3) titled "predicted (true)"."""
    preds = model(pixels_to_float(images, hwc=True)).argmax(1)
    figure = prediction_grid_figure(
        images.numpy(), model.class_names, preds.tolist(), labels.tolist()
    )
    save_png(figure, out_dir / "predictions.png")


def evaluate(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    check_devices(cfg.trainer)
    set_threads(cfg.threads)
    net_config = OmegaConf.to_container(cfg.model.net, resolve=True) if cfg.get("model") else None
    model = load_classifier(cfg.ckpt_path, net_config)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("test")
    if dm.classes != model.class_names:
        raise DataError(
            f"the data's classes {dm.classes} differ from the checkpoint's {model.class_names}: "
            "point data.source and data.root at the data set the network was trained on"
        )
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], default_root_dir=str(out_dir))
    test = trainer.test(model, datamodule=dm, verbose=False)[0]
    record = RunRecord(
        out_dir / "metrics.json",
        status="finished",
        checkpoint=str(cfg.ckpt_path),
        **{"test/acc": round(test["test/acc"], 4), "test/loss": round(test["test/loss"], 4)},
        **{"test/acc_per_class": model.test_results["acc_per_class"]},
        params=count_parameters(model.net),
        wall_time_s=round(time.perf_counter() - started, 2),
        run_dir=str(out_dir),
    )
    save_confusion_tables(out_dir, model.test_results["confusion"], model.class_names)
    pick = spread(len(dm.test_labels), GRID_IMAGES)
    save_prediction_grid(
        out_dir, model.cpu(), dm.test_images[pick].cpu(), dm.test_labels[pick].cpu()
    )
    print_results(record.data)
    log.info(
        "per-class table, confusion matrix and prediction grid: %s/{per_class.csv,confusion.csv,"
        "confusion.png,predictions.png}",
        out_dir,
    )
    return record.data


@entry_point
@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
@cli
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
