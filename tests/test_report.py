"""The sweep report, and TensorBoard on a sweep, from a tiny real sweep with one failing job."""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import metadata as hp_metadata

from src.errors import DataError
from src.report import (
    best_runs,
    latest_sweep,
    make_report,
    plot_accuracy_against,
    plot_per_class,
)
from tests.conftest import ROOT, make_folder_tree, run_cli, tiny_overrides

FINISHED = ["k3_seed1", "k3_seed2", "k5_seed1", "k5_seed2"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """kernel 3 and 5 with seeds 1 and 2, then kernel 13, which does not fit the tutorial net
    pooled after each conv.

    Run by Hydra's basic launcher (every job in this one child process: faster than a process
    per job), which stops at the first failed job (k13_seed1); the parallel launcher, which runs
    on past failures, is tested in tests/test_sweeps.py. The report reads folders either way.
    """
    tmp = tmp_path_factory.mktemp("sweep")
    data = make_folder_tree(tmp / "data")
    run_cli(
        "src.train",
        "-m",
        *tiny_overrides(tmp, data),
        "trainer.max_epochs=1",
        "model.kernel_size=3,5,13",
        "model.pool=true",
        "seed=1,2",
        f"hydra.sweep.dir={tmp / 'sweep'}",
        "hydra.sweep.subdir=k${model.kernel_size}_seed${seed}",
        "hydra/launcher=basic",
    )
    folder = tmp / "sweep"
    for name in FINISHED:
        assert json.loads((folder / name / "metrics.json").read_text())["status"] == "finished"
    return folder


def _metrics(sweep: Path, job: str) -> dict:
    return json.loads((sweep / job / "metrics.json").read_text())


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_report_tables_every_job_with_seed_statistics(sweep, tmp_path):
    report = make_report(sweep, tmp_path / "report")
    assert report["swept"] == ["model.kernel_size", "seed"]
    jobs = {row["job"]: row for row in _rows(tmp_path / "report" / "jobs.csv")}
    assert set(FINISHED) <= set(jobs) and "k13_seed1" in jobs
    for name in FINISHED:
        metrics = _metrics(sweep, name)
        assert jobs[name]["status"] == "finished"
        assert float(jobs[name]["test/acc"]) == pytest.approx(metrics["test/acc"])
        assert int(jobs[name]["params"]) == metrics["params"]
    failed = [row for row in jobs.values() if row["status"] == "failed"]
    assert failed and all(row["model.kernel_size"] == "13" for row in failed)
    assert all("kernel 13" in row["error"] for row in failed)

    seeds = {row["model.kernel_size"]: row for row in _rows(tmp_path / "report" / "seeds.csv")}
    assert set(seeds) == {"3", "5"}  # the failed kernel has no finished run to average
    for kernel in ("3", "5"):
        accs = [_metrics(sweep, f"k{kernel}_seed{s}")["test/acc"] for s in (1, 2)]
        assert seeds[kernel]["seeds"] == "2"
        assert float(seeds[kernel]["test/acc mean"]) == pytest.approx(statistics.fmean(accs))
        assert float(seeds[kernel]["test/acc std"]) == pytest.approx(statistics.stdev(accs))

    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## Mean ± standard deviation over seeds" in markdown
    assert "## Failed jobs" in markdown and "`k13_seed1` (failed)" in markdown
    assert "does not fit" in markdown.split("## Failed jobs")[1]


def test_report_draws_its_plots(sweep, tmp_path):
    report = make_report(sweep, tmp_path / "report")
    names = {path.name for path in report["plots"]}
    assert names == {"acc_vs_model.kernel_size.png", "per_class_best.png", "time_vs_acc.png"}
    for path in report["plots"]:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 400 and image.height > 250
        assert f"]({path.name})" in (tmp_path / "report" / "report.md").read_text()


def test_report_on_a_sweep_stopped_halfway(sweep, tmp_path):
    """A job still "running" and one that never wrote metrics.json show as unfinished."""
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("*.ckpt", "events.*"))
    running = _metrics(copy, "k5_seed2") | {"status": "running"}
    (copy / "k5_seed2" / "metrics.json").write_text(json.dumps(running))
    (copy / "k3_seed2" / "metrics.json").unlink()
    report = make_report(copy)
    status = {job.name: job.status for job in report["jobs"]}
    assert status["k5_seed2"] == status["k3_seed2"] == "unfinished"
    assert status["k3_seed1"] == "finished"
    # Only finished jobs count: one seed left for each kernel, so no spread table.
    assert [group["seeds"] for group in report["groups"]] == [1, 1]
    assert not (copy / "report" / "seeds.csv").exists()
    assert (copy / "report" / "jobs.csv").exists()


def test_report_cli_defaults_and_errors(sweep, tmp_path):
    result = run_cli("src.report", str(sweep), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| k3_seed1 | 3 | 1 | finished |" in result.stdout
    assert (tmp_path / "out" / "report.md").exists()

    result = run_cli("src.report", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert "does not exist" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_latest_sweep_is_the_most_recently_changed(tmp_path):
    root = tmp_path / "outputs" / "sweeps"
    with pytest.raises(DataError, match="no sweep folder"):
        latest_sweep(root)
    old, new = root / "2025-01-02" / "10-00-00_1", root / "2025-01-01" / "23-00-00_2"
    for age, folder in enumerate((new, old)):
        folder.mkdir(parents=True)
        os.utime(folder, (1e9 - age * 100, 1e9 - age * 100))
    assert latest_sweep(root) == new


def test_tensorboard_on_a_sweep_names_each_run_by_its_job(sweep):
    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(sweep)).Reload()
    assert {f"{name}/tensorboard" for name in FINISHED} <= set(multiplexer.Runs())
    for name in FINISHED:
        content = multiplexer.SummaryMetadata(
            f"{name}/tensorboard", hp_metadata.SESSION_START_INFO_TAG
        ).plugin_data.content
        hparams = hp_metadata.parse_session_start_info_plugin_data(content).hparams
        kernel, seed = name.removeprefix("k").split("_seed")
        assert hparams["model.kernel_size"].number_value == int(kernel)
        assert hparams["seed"].number_value == int(seed)


def _fake_sweep(root: Path, lrs: list[float], val: bool) -> Path:
    """Finished job folders as a sweep over optimizer.lr leaves them, with or without
    validation (data.val_size=0)."""
    for i, lr in enumerate(lrs):
        job = root / str(i)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- optimizer.lr={lr}\n- seed=1\n")
        metrics = {
            "status": "finished",
            "val/acc_best": 50.0 + i if val else None,
            "test/acc": 40.0 + i,
            "test/acc_per_class": {"cat": 40.0 + i, "dog": 41.0},
            "wall_time_s": 10.0,
        }
        (job / "metrics.json").write_text(json.dumps(metrics))
    return root


@pytest.mark.parametrize("val", [True, False])
def test_report_without_validation_and_a_swept_learning_rate(val, tmp_path):
    sweep = _fake_sweep(tmp_path / "sweep", [0.01, 0.02, 0.05], val)
    report = make_report(sweep)
    assert {path.name for path in report["plots"]} >= {"acc_vs_optimizer.lr.png"}
    figure = plot_accuracy_against("optimizer.lr", report["groups"], report["swept"])
    titles = [axis.get_title() for axis in figure.axes]
    assert titles == (["best val acc (%)", "test acc (%)"] if val else ["test acc (%)"])
    assert all(axis.get_xscale() == "log" for axis in figure.axes)  # lr: log, even over 5x
    best, by = best_runs(report["jobs"])
    assert [job.name for job in best] == ["2", "1", "0"] and by == ("validation" if val else "test")
    title = plot_per_class(best, report["swept"], by).axes[0].get_title()
    assert title.endswith("(by validation accuracy)" if val else "(by test accuracy)")


def test_make_tensorboard_opens_the_newest_folder_with_event_files(tmp_path):
    """Not the newest folder: a run stopped before training (an older Lightning) holds none."""
    events = [
        tmp_path / "outputs/runs/2025-01-01/10-00-00_a/tensorboard/events.out.tfevents.1",
        tmp_path / "outputs/sweeps/2025-01-01/11-00-00_b/3/tensorboard/events.out.tfevents.2",
    ]
    empty = tmp_path / "outputs/runs/2025-01-01/12-00-00_c"
    for age, path in enumerate([*events, empty / "metrics.json"]):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.utime(path, (1e9 + age, 1e9 + age))
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "tensorboard").write_text('#!/bin/sh\necho "tensorboard $*"\n')
    (venv / "bin" / "tensorboard").chmod(0o755)
    (tmp_path / "pyproject.toml").touch()  # `install` is up to date: nothing to install
    os.utime(tmp_path / "pyproject.toml", (1e9, 1e9))
    (venv / ".installed").touch()
    make = ["make", "-s", "-f", str(ROOT / "Makefile"), "tensorboard", f"VENV={venv}"]
    result = subprocess.run(make, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "tensorboard --logdir outputs/sweeps/2025-01-01/11-00-00_b" in result.stdout

    for path in events:
        path.unlink()
    result = subprocess.run(make, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "no TensorBoard logs in outputs/" in result.stderr
