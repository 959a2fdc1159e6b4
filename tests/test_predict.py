"""Evaluation's saved tables and pictures, and prediction on files and folders."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import src.predict
from src.errors import DataError
from src.eval import evaluate
from src.predict import predict
from src.training import train
from tests.conftest import (
    CLASSES,
    compose_config,
    make_folder_tree,
    run_cli,
    run_entry,
    synthetic_images,
    tiny_overrides,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(data folder, tmp folder, train metrics) of a tiny run that learned the classes."""
    tmp = tmp_path_factory.mktemp("trained")
    data = make_folder_tree(tmp / "data")
    overrides = [*tiny_overrides(tmp, data), "trainer.max_epochs=4", "optimizer.lr=0.02"]
    return data, tmp, train(compose_config("train", overrides, tmp / "run"))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_eval_saves_per_class_table_confusion_matrix_and_grid(trained, tmp_path):
    data, tmp, metrics = trained
    overrides = [
        f"ckpt_path={metrics['best_checkpoint']}",
        *[o for o in tiny_overrides(tmp, data) if o.startswith(("data.", "threads"))],
        "trainer.accelerator=cpu",
    ]
    result = evaluate(compose_config("eval", overrides, tmp_path / "eval"))
    out = tmp_path / "eval"
    confusion = _rows(out / "confusion.csv")
    assert [row["true/predicted"] for row in confusion] == CLASSES
    counts = np.array([[int(row[name]) for name in CLASSES] for row in confusion])
    assert counts.sum() == 3 * 10  # every test image once: 10 per class
    assert (counts.sum(1) == 10).all()
    per_class = {row["class"]: row for row in _rows(out / "per_class.csv")}
    for i, name in enumerate(CLASSES):
        assert int(per_class[name]["correct"]) == counts[i, i]
        accuracy = float(per_class[name]["accuracy"])
        assert accuracy == pytest.approx(result["test/acc_per_class"][name], abs=0.01)
    for picture in ("confusion.png", "predictions.png"):
        with Image.open(out / picture) as image:
            assert image.format == "PNG" and image.width > 300


def _write_labelled_folder(root: Path) -> int:
    """Images of every class in other sizes and formats, plus one file that is not an image."""
    rng = np.random.default_rng(7)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i, pixels in enumerate(synthetic_images(4, label, rng)):
            image = Image.fromarray(pixels)
            if i % 2:
                image.resize((48, 40)).save(root / name / f"{i}.jpg", quality=95)
            else:
                image.save(root / name / f"{i}.png")
    (root / "dog" / "notes.jpg").write_text("not an image")
    return 4 * len(CLASSES)


def test_predict_classifies_a_labelled_folder_and_reports_its_accuracy(trained, tmp_path):
    _, _, metrics = trained
    n_images = _write_labelled_folder(tmp_path / "inputs")
    out = tmp_path / "predict"
    result = run_cli(
        "src.predict",
        f"ckpt_path={metrics['best_checkpoint']}",
        f"inputs={tmp_path / 'inputs'}",
        "top_k=2",
        f"hydra.run.dir={out}",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-2000:]
    rows = _rows(out / "predictions.csv")
    assert {"path", "pred", "prob", "top_k", "true", "correct", "error"} <= set(rows[0])
    broken = [row for row in rows if row["path"].endswith("notes.jpg")]
    assert len(broken) == 1 and "cannot read image" in broken[0]["error"] and not broken[0]["pred"]
    assert "cannot read image" in output and "notes.jpg" in output
    good = [row for row in rows if not row["error"]]
    assert len(good) == n_images
    for row in good:
        assert row["pred"] in CLASSES and 1 / 3 <= float(row["prob"]) <= 1
        assert row["true"] == Path(row["path"]).parent.name
        assert len(row["top_k"].split()) == 2
    accuracy = sum(row["correct"] == "1" for row in good) / len(good) * 100
    assert accuracy > 60  # a learnable set: chance is 33%
    assert f"{accuracy:.2f}%" in result.stdout  # the printed accuracy of the folder
    with Image.open(out / "predictions.png") as image:
        assert image.format == "PNG"


def test_predict_single_files_and_bad_inputs(trained, tmp_path):
    _, _, metrics = trained
    image = tmp_path / "ship.webp"
    Image.fromarray(synthetic_images(1, 2, np.random.default_rng(1))[0]).resize((64, 64)).save(
        image
    )
    ckpt = f"ckpt_path={metrics['best_checkpoint']}"

    def run(inputs: str, folder: str) -> dict:
        return predict(compose_config("predict", [ckpt, inputs], tmp_path / folder))

    result = run(f"inputs=[{image}]", "a")
    assert result["classified"] == 1 and result["failed"] == 0 and result["accuracy"] == {}
    [row] = _rows(tmp_path / "a" / "predictions.csv")
    assert row["pred"] in CLASSES and row["true"] == "" and row["correct"] == ""

    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"input {missing} does not exist"):
        run(f"inputs={missing}", "b")
    text = tmp_path / "only.png"
    text.write_text("not an image")
    with pytest.raises(DataError, match="none of the 1 files is a readable image"):
        run(f"inputs={text}", "c")


def test_predict_run_from_inside_an_image_folder_reads_only_its_images(trained, tmp_path, capsys):
    """Hydra's outputs/ lands in the folder: the next run must not read the last one's files."""
    _, _, metrics = trained
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, pixels in enumerate(synthetic_images(3, 0, np.random.default_rng(3))):
        Image.fromarray(pixels).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image, and never opened")
    ckpt = f"ckpt_path={metrics['best_checkpoint']}"
    for run in ("1", "2"):
        out = folder / "outputs" / "predict" / run
        argv = [ckpt, f"inputs={folder}", f"hydra.run.dir={out}"]
        status, output = run_entry(src.predict.main, *argv, capsys=capsys)
        assert status == 0, output
        rows = _rows(out / "predictions.csv")
        assert sorted(Path(row["path"]).name for row in rows) == ["0.png", "1.png", "2.png"]
        assert not any(row["error"] for row in rows) and "[ERROR]" not in output
        assert "skipped as not images (by their extension): 1" in output
