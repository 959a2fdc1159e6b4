"""The benchmark command (`make bench`) runs end to end on tiny synthetic data.

Speed itself is never asserted here (that is the benchmark's own output); these tests check
that every section runs, writes its JSON and Markdown, and reports what the README quotes.
"""

from __future__ import annotations

import json
import mmap
import multiprocessing as mp
import os
import time

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.accuracy import TrainClock, summarize
from benchmarks.processes import smaps
from tests.conftest import make_folder_tree, run_cli


@pytest.fixture
def bench_data(tmp_path):
    # Enough images for the timed windows of every batch size (256 included).
    root = make_folder_tree(tmp_path / "data", n_train=200, n_test=20)
    return [
        "data.source=folder",
        f"data.root={root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.val_size=12",
        "data.fetch_size=4",  # a batch per fetch: several fetches even in these few images
    ]


IN_PROCESS = "pipeline,per_batch,flops,time_to_accuracy,gpu"


def run_bench(tmp_path, data: list[str], sections: str) -> tuple[dict, str]:
    """Run `python -m benchmarks --quick` as a user would; its JSON and Markdown."""
    out = tmp_path / "results" / "cpu"
    result = run_cli(
        "benchmarks", "--quick", f"--sections={sections}", f"--out={out}", *data, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = out.with_suffix(".md").read_text()
    assert table == result.stdout[-len(table) :], "the table is printed too"
    return json.loads(out.with_suffix(".json").read_text()), table


@pytest.mark.slow
def test_in_process_sections_run_and_write_json_and_markdown(bench_data, tmp_path):
    data, table = run_bench(tmp_path, bench_data, IN_PROCESS)
    sections = data["sections"]
    assert list(sections) == IN_PROCESS.split(",")
    assert data["machine"]["cores"] >= 1 and data["machine"]["cpu"]

    for batch in ("batch 4", "batch 64", "batch 256"):
        row = sections["per_batch"][batch]
        assert row["plain_ms"] > 0 and row["cifar10_lab_ms"] > 0
    assert sections["per_batch"]["batch 4"]["seeds_loop_ms"] > 0
    assert sections["flops"]["matmul_peak_gflops"] > 0
    # Three times the forward pass, less the input gradient of the first layer (none needed).
    assert sections["flops"]["tutorial"]["mflop_per_image"] == pytest.approx(3.2, abs=0.01)
    assert sections["flops"]["vgg6"]["mflop_per_image"] > 100  # seed 002's VGG-like net
    for batch in ("batch 4", "batch 256"):
        assert set(sections["pipeline"][batch]) == {"none", "flip", "flip_crop", "seed004"}
        assert all(row["ours"] > 0 for row in sections["pipeline"][batch].values())

    # The synthetic classes are easy: both loops reach 53% and the ratio is computed.
    tta = sections["time_to_accuracy"]
    assert tta["seeds_loop"]["reached"] and tta["cifar10_lab"]["reached"]
    ratio = tta["cifar10_lab"]["time_s"] / tta["seeds_loop"]["time_s"]
    assert tta["ratio"] == pytest.approx(ratio, rel=0.01)
    if not torch.cuda.is_available():
        assert sections["gpu"]["skipped"] == "no GPU"
        assert "| 8. GPU | skipped: no GPU |" in table

    assert "| measure | value |" in table and "| target | measured | limit | met |" in table
    assert len(data["targets"]) == 5  # the sweep and memory targets need their sections
    for target in data["targets"]:
        assert target["target"] in table and isinstance(target["met"], bool)


@pytest.mark.slow
def test_sweep_and_memory_sections_run_whole_jobs(bench_data, tmp_path):
    data, table = run_bench(tmp_path, bench_data, "sweep,memory")
    sweep, memory = data["sections"]["sweep"], data["sections"]["memory"]
    assert all(sweep[f"{way}_s"] > 0 for way in ("parallel", "one_at_a_time", "basic_launcher"))
    assert sweep["ratio"] == pytest.approx(sweep["parallel_s"] / sweep["one_at_a_time_s"], rel=0.01)
    assert memory["one"]["pss_jobs_mb"] > memory["one"]["data_file_mb"] > 0
    # Every job reads every training image, sharing the cached pages: one copy, not two.
    for run in memory["one"], memory["parallel"]:
        assert run["data_resident_in_each_job_mb"] == pytest.approx(run["data_file_mb"], rel=0.05)
        assert run["data_copies"] == pytest.approx(1.0, abs=0.05)
    assert [t["met"] for t in data["targets"] if "copies" in t["target"]] == [True]


def test_unknown_section_fails_with_one_clear_line(tmp_path, capsys):
    from benchmarks.__main__ import main

    assert main(["--sections", "speed", f"--out={tmp_path / 'x'}"]) == 2
    assert capsys.readouterr().err == (
        "[ERROR] unknown benchmark sections ['speed']: choose from "
        "['pipeline', 'per_batch', 'flops', 'time_to_accuracy', 'sweep', 'memory', 'gpu']\n"
    )
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_seeds_loop_runs_its_epochs_per_seed_and_resumes(bench_data, tmp_path, capsys):
    from benchmarks import seeds_loop

    results = tmp_path / "seeds_loop.json"
    args = ["--seeds", "0", "--out", str(results), *bench_data]
    assert seeds_loop.main(args) == 0  # the tutorial's recipe: 2 epochs
    runs = json.loads(results.read_text())["runs"]
    assert [(r["study"], r["seed"]) for r in runs] == [(seeds_loop.TUTORIAL, 0)]
    assert len(runs[0]["test_acc_per_epoch"]) == 2 and "lr 0.001 " in runs[0]["recipe"]
    assert f"1 seed: {runs[0]['test_acc_per_epoch'][-1]:.2f}" in capsys.readouterr().out
    before = results.read_text()
    assert seeds_loop.main(args) == 0  # recorded seeds are not run again
    assert results.read_text() == before
    width = ["experiment=seed000_width", "model.n=8", "trainer.max_epochs=1"]
    assert seeds_loop.main([*args, *width]) == 0  # another study's net and lr, its own record
    runs = json.loads(results.read_text())["runs"]
    assert [r["study"] for r in runs] == [seeds_loop.TUTORIAL, " ".join(width)]
    assert len(runs[1]["test_acc_per_epoch"]) == 1 and "lr 0.0015 " in runs[1]["recipe"]


def test_variants_time_each_setting_and_write_json(tmp_path, capsys):
    from benchmarks import variants

    out = tmp_path / "variants.json"
    only = ["fp32 (default)", "channels_last", "oneDNN off"]
    assert variants.main(["--batch", "4", "--steps", "1", "--only", *only, "--out", str(out)]) == 0
    results = json.loads(out.read_text())["variants"]
    assert list(results) == only and results["fp32 (default)"]["vs_first"] == 1.0
    assert all(r["ms_per_step"] > 0 for r in results.values())
    assert torch.backends.mkldnn.enabled, "oneDNN is switched back on"
    assert "channels_last" in capsys.readouterr().out


def test_time_to_accuracy_is_the_first_evaluation_at_the_target():
    evals = [(1.0, 40.0, 100), (2.0, 53.5, 200), (3.0, 52.0, 300), (4.0, 60.0, 400)]
    result = summarize(evals, target=53.0, epoch=200)
    assert result["reached"] and result["time_s"] == 2.0 and result["epochs"] == 1.0
    missed = summarize(evals, target=70.0, epoch=200)
    assert not missed["reached"] and missed["time_s"] is None and missed["accuracy"] == 60.0


def _touch_and_wait(path, ready, done):
    with open(path, "rb") as file:
        view = mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ)
        sum(view[i] for i in range(0, len(view), 4096))  # read every page
        ready.set()
        done.wait(30)


def test_pss_counts_shared_file_pages_once(tmp_path):
    """What the memory section relies on: two processes reading one mapped file hold its
    pages once (their PSS of it adds up to one copy of the file)."""
    path = tmp_path / "images.npy"
    np.save(path, np.ones(4 << 20, np.uint8))  # 4 MiB
    ctx = mp.get_context("fork")
    ready, done = [ctx.Event(), ctx.Event()], ctx.Event()
    procs = [ctx.Process(target=_touch_and_wait, args=(path, r, done)) for r in ready]
    for proc in procs:
        proc.start()
    try:
        assert all(r.wait(30) for r in ready)
        samples = [smaps(proc.pid, path) for proc in procs]
    finally:
        done.set()
        for proc in procs:
            proc.join()
    size = path.stat().st_size
    for mapped in samples:
        assert mapped.file_rss == pytest.approx(size, rel=0.01) and mapped.pss > mapped.file_rss
        assert mapped.file_private == 0
    assert sum(m.file_pss for m in samples) == pytest.approx(size, rel=0.01)
    assert smaps(os.getpid(), path).file_rss == 0  # this process does not map it


def _write_and_wait(path, ready, done):
    with open(path, "r+b") as file:
        view = mmap.mmap(file.fileno(), 0, flags=mmap.MAP_PRIVATE)
        for i in range(0, len(view), 4096):
            view[i] = 1  # copy-on-write: this process gets its own copy of every page
        ready.set()
        done.wait(30)


def test_pages_a_process_writes_count_as_its_own_copy(tmp_path):
    path = tmp_path / "images.npy"
    np.save(path, np.ones(1 << 20, np.uint8))
    ctx = mp.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_write_and_wait, args=(path, ready, done))
    proc.start()
    try:
        assert ready.wait(30)
        mapped = smaps(proc.pid, path)
    finally:
        done.set()
        proc.join()
    assert mapped.file_private == pytest.approx(path.stat().st_size, rel=0.01)


class Sleeper(L.LightningModule):
    """Training steps of 10 ms, validations of 100 ms: a clock to check TrainClock against."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        time.sleep(0.01)
        return (self.weight - 1).pow(2).sum()

    def validation_step(self, batch, batch_idx):
        time.sleep(0.1)
        self.log("val/acc", float(batch_idx))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_train_clock_counts_training_and_stops_for_validation():
    clock = TrainClock()
    loader = DataLoader(TensorDataset(torch.zeros(20, 1), torch.zeros(20)), batch_size=1)
    trainer = L.Trainer(
        max_epochs=2,
        val_check_interval=5,  # four validations per epoch, mid-epoch and at its end
        limit_val_batches=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[clock],
    )
    started = time.perf_counter()
    trainer.fit(Sleeper(), loader, loader)
    fit_seconds = time.perf_counter() - started
    assert len(clock.evals) == 8
    assert [images for _, _, images in clock.evals] == [5, 10, 15, 20, 25, 30, 35, 40]
    # 40 steps of 10 ms: at least 0.4 s; the 8 validations' 1.6 s of sleep are not counted,
    # however slow the machine (no upper bound of our own).
    assert 0.4 <= clock.seconds <= fit_seconds - 1.6
    times = [seconds for seconds, _, _ in clock.evals]
    assert times == sorted(times) and times[-1] == pytest.approx(clock.seconds, abs=0.1)


def test_seeds_loop_refuses_a_recipe_its_loop_would_not_run(tmp_path, capsys):
    from benchmarks import seeds_loop

    out = tmp_path / "seeds_loop.json"
    argv = ["experiment=seed000_width", "optimizer.momentum=0.5", "--out", str(out)]
    assert seeds_loop.main(argv) == 2
    assert capsys.readouterr().err == (
        "[ERROR] the tutorial's loop runs the seeds' recipe only; this one needs "
        "optimizer.momentum=0.9\n"
    )
    assert not out.exists()
