"""Training and evaluation end to end on tiny synthetic data, in-process and from the CLI."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import src.eval
import src.train
from src.errors import find_user_error
from src.eval import evaluate
from src.training import train
from tests.conftest import compose_config, run_cli, run_entry, tiny_overrides

KEYS = {
    "status",
    "val/acc_best",
    "test/acc",
    "test/loss",
    "test/acc_per_class",
    "params",
    "wall_time_s",
}


def train_tiny(tmp_path: Path, data_root: Path, *extra: str, source="folder", run="run") -> dict:
    overrides = [*tiny_overrides(tmp_path, data_root, source), *extra]
    return train(compose_config("train", overrides, tmp_path / run))


@pytest.mark.parametrize("source", ["folder", "torchvision"])
def test_train_writes_a_complete_run_folder(source, folder_data, official_data, tmp_path):
    root = folder_data if source == "folder" else official_data
    metrics = train_tiny(tmp_path, root, source=source)
    run = tmp_path / "run"
    assert KEYS <= metrics.keys() and metrics["status"] == "finished"
    assert json.loads((run / "metrics.json").read_text()) == metrics
    assert "_target_: src.data.CIFAR10DataModule" in (run / "config.yaml").read_text()
    assert (run / "checkpoints" / "best.ckpt").exists()
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert len(metrics["test/acc_per_class"]) == (3 if source == "folder" else 10)
    per_class = metrics["test/acc_per_class"].values()  # the whole lies among its parts
    assert min(per_class) <= metrics["test/acc"] <= max(per_class)
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best"} <= tags
    assert any(tag.startswith("lr-") for tag in tags), tags


def test_synthetic_classes_are_learned(folder_data, tmp_path):
    metrics = train_tiny(tmp_path, folder_data, "trainer.max_epochs=4", "optimizer.lr=0.02")
    assert metrics["test/acc"] > 60  # three classes: chance is 33%


def test_same_seed_same_numbers(folder_data, tmp_path):
    extra = ("seed=3", "data.augment=flip_crop", "model=tutorial")
    a = train_tiny(tmp_path, folder_data, *extra, run="a")
    b = train_tiny(tmp_path, folder_data, *extra, run="b")
    c = train_tiny(tmp_path, folder_data, "seed=4", "data.augment=flip_crop", run="c")
    assert a["test/loss"] == b["test/loss"] and a["val/acc_best"] == b["val/acc_best"]
    assert a["test/loss"] != c["test/loss"]


def test_fetching_several_batches_at_once_trains_the_same_weights(folder_data, tmp_path):
    """data.fetch_size only changes how many batches Lightning handles at once: the optimizer
    steps, the one-cycle schedule's length and so the weights are those of one batch at a time."""
    import torch

    extra = ("seed=5", "scheduler=onecycle", "data.augment=none", "data.val_size=0")
    one = train_tiny(tmp_path, folder_data, *extra, "data.fetch_size=8", run="one")
    many = train_tiny(tmp_path, folder_data, *extra, "data.fetch_size=48", run="many")
    assert one["test/loss"] == many["test/loss"]
    weights = [
        torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        for run in ("one", "many")
    ]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_max_steps_counts_optimizer_steps_inside_a_fetch(folder_data, tmp_path):
    # 7 steps of batch 8, in fetches of 5 batches: the second fetch stops after its 2nd batch,
    # and the one-cycle schedule (7 steps long) is not stepped past its end.
    train_tiny(
        tmp_path, folder_data, "data.fetch_size=40", "scheduler=onecycle", "+trainer.max_steps=7"
    )
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 7


def test_lightning_counters_count_batches_not_fetches(folder_data, tmp_path):
    """limit_train_batches and a whole-number val_check_interval mean batches (optimizer steps
    of data.batch_size) as in any Lightning project, however many batches a fetch holds (two
    here: 108 training images, batches of 8, fetches of 16 images)."""
    train_tiny(tmp_path, folder_data, "++trainer.limit_train_batches=5", run="limited")
    ckpt = torch.load(tmp_path / "limited" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2 * 5  # two epochs of 5 batches (the third fetch cut in half)

    train_tiny(tmp_path, folder_data, "trainer.max_epochs=1", "+trainer.val_check_interval=3")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    # 14 batches: validations after batches 3, 6, 9 and 12 (as Lightning counts them, none at
    # the end of an epoch whose length the interval does not divide).
    assert len(events.Scalars("val/acc")) == 4


def test_eval_reproduces_the_test_accuracy_train_printed(folder_data, tmp_path):
    metrics = train_tiny(tmp_path, folder_data)
    overrides = [
        f"ckpt_path={metrics['best_checkpoint']}",
        *[o for o in tiny_overrides(tmp_path, folder_data) if o.startswith(("data.", "threads"))],
        "trainer.accelerator=cpu",
    ]
    result = evaluate(compose_config("eval", overrides, tmp_path / "eval"))
    assert result["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert result["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)
    assert result["test/acc_per_class"] == pytest.approx(metrics["test/acc_per_class"])


def test_resume_from_last_checkpoint_continues_training(folder_data, tmp_path):
    first = train_tiny(tmp_path, folder_data, "trainer.max_epochs=1", "scheduler=none", run="first")
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed = train_tiny(
        tmp_path,
        folder_data,
        "trainer.max_epochs=2",
        "scheduler=none",
        f"ckpt_path={last}",
        run="resumed",
    )
    assert first["epochs"] == 1 and resumed["epochs"] == 2


def test_cli_trains_and_prints_the_result_table(folder_data, tmp_path):
    result = run_cli(
        "src.train",
        *tiny_overrides(tmp_path, folder_data),
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path / 'cli'}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for row in ("best val accuracy", "test accuracy", "parameters", "wall time", "run folder"):
        assert row in result.stdout
    assert json.loads((tmp_path / "cli" / "metrics.json").read_text())["status"] == "finished"
    assert (tmp_path / "cli" / ".hydra" / "config.yaml").exists()
    assert (tmp_path / "cli" / "train.log").read_text()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=-0.1", "optimizer.lr must be a positive number"),
        ("trainer.max_epochs=0", "trainer.max_epochs must be a positive integer"),
        ("data.batch_size=0", "data.batch_size must be a positive integer"),
        ("model.c2=16 model.kernel_size=13 model.pool=true", "conv2 (kernel 13"),
    ],
)
def test_bad_values_fail_with_one_clear_line(override, message, folder_data, tmp_path):
    """In-process: the one-line CLI report of such errors is tested once, end to end, in
    tests/test_faults.py (test_a_real_command_line_prints_one_line_and_exits_2)."""
    overrides = [*tiny_overrides(tmp_path, folder_data), *override.split()]
    with pytest.raises(Exception) as caught:  # Hydra may wrap the UserError
        train(compose_config("train", overrides, tmp_path / "bad"))
    error = find_user_error(caught.value)  # what the command line prints, as one line
    assert error is not None and message in str(error) and "\n" not in str(error)
    assert error.exit_status == 2
    metrics = json.loads((tmp_path / "bad" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and message in metrics["error"]


def test_the_run_log_holds_what_the_console_showed(folder_data, tmp_path, capsys):
    overrides = [o for o in tiny_overrides(tmp_path, folder_data) if "progress_bar" not in o]
    run = tmp_path / "run"
    status, output = run_entry(src.train.main, *overrides, f"hydra.run.dir={run}", capsys=capsys)
    assert status == 0, output
    log = (run / "train.log").read_text()
    assert "it/s" in output and "it/s" not in log, "the console's progress bars, not the log's"
    for epoch in (1, 2):
        line = re.search(rf"epoch {epoch}/2: train/loss [\d.e-]+, train/acc .*val/acc [\d.]+", log)
        assert line, log
    for shown in ("tutorial: layers", "features.0 (Conv2d)", "test accuracy", "run folder"):
        assert shown in output and shown in log
    assert "GPU available: False" in log  # Lightning's own lines too


def test_no_library_noise(folder_data, tmp_path, capsys, recwarn, monkeypatch):
    """Stopped (trainer.max_steps) before the first validation, on a machine with SLURM's srun,
    then evaluated: no warning or message that says nothing about the run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    run = tmp_path / "run"
    argv = [*tiny_overrides(tmp_path, folder_data), "+trainer.max_steps=2", f"hydra.run.dir={run}"]
    status, output = run_entry(src.train.main, *argv, capsys=capsys)
    assert status == 0, output
    assert json.loads((run / "metrics.json").read_text())["val/acc_best"] is None
    data = [o for o in tiny_overrides(tmp_path, folder_data) if o.startswith(("data.", "thr"))]
    ckpt = f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"
    argv = [ckpt, *data, "trainer.accelerator=cpu", f"hydra.run.dir={tmp_path / 'eval'}"]
    status, eval_output = run_entry(src.eval.main, *argv, capsys=capsys)
    assert status == 0, eval_output
    shown = output + eval_output + (run / "train.log").read_text()
    shown += "\n".join(str(warning.message) for warning in recwarn)
    noise = ("weights_only", "srun", "could not find the monitored key")
    assert [text for text in noise if text in shown] == []
