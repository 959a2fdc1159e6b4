"""The published record beside ours: verdicts, tables, headline and figures come from recorded
runs alone (a row without runs never shows a number of ours), and `python -m src.reproduce`
records, resumes and never repeats runs."""

from __future__ import annotations

import argparse
import json
import re
import subprocess

import pytest
import torch
from matplotlib.container import BarContainer

from src import reproduce
from src.errors import ConfigError
from src.studies import figures, tables
from src.studies.rows import CLASSES, ROWS, Row

TUTORIAL = ROWS[0]
BN6 = next(r for r in ROWS if r.experiment == "seed003_bn6")
RUN1 = next(r for r in ROWS if r.experiment == "seed001_run1")  # two published runs
CONV3 = next(r for r in ROWS if r.experiment == "seed000_conv3")  # no note


def record(row: Row, seed: int, acc: float | None, kind: str = "run", **extra) -> dict:
    return {
        "row": row.key,
        "kind": kind,
        "seed": seed,
        "test_acc": acc,
        "per_class": None,
        "epochs": 2,
        "epoch_time_s": 50.0,
        "wall_time_s": 120.0,
        "data": "JPEG copy (../shared/data), 5,000 test images",
        "hardware": "2-core CPU (test), no GPU",
        "date": "2025-01-01",
        "command": f"python -m src.train {row.key} seed={seed}",
        "run_dir": "outputs/reproduce/x",
        **extra,
    }


def no_estimate(row, probe):
    return f"not yet run here: probe of {probe['probe_batches']} batches"


def cells(text: str, experiment: str, study: str) -> list[str]:
    line = next(line for line in text.splitlines() if f"| `{experiment}` | {study} |" in line)
    return [c.strip() for c in line.strip("|").split("|")]


def test_every_published_figure_of_the_studies_has_a_row():
    widths = sorted(r.point[1] for r in ROWS if r.point and r.point[0] == "seed000_width")
    assert widths == [30, 50, 70, 90, 110, 130, 150, 170]
    assert len({r.key for r in ROWS}) == len(ROWS)  # each row its own runs
    assert sum(len(r.published) for r in ROWS) == 24
    assert all(len(r.per_class) in (0, len(CLASSES)) for r in ROWS)
    two_epochs = {"seed000_tutorial", "seed001_run1", "seed001_run2", "seed001_run3"}
    assert all(len(r.seeds) == 5 for r in ROWS if r.experiment in two_epochs)
    assert all(len(r.seeds) >= 3 for r in ROWS if r.seeds)


@pytest.mark.parametrize(
    ("published", "accs", "said"),
    [
        (55.0, [54.0, 55.0, 56.0], "reproduced"),
        (57.0, [54.0, 55.0, 56.0], "reproduced"),  # exactly mean + 2 sd
        (57.1, [54.0, 55.0, 56.0], "differs by -2.10"),
        (56.4, [55.0, 55.1, 54.9], "reproduced"),  # 2 sd is 0.2: the 1.5-point floor holds
        (53.4, [55.0, 55.1, 54.9], "differs by +1.60"),
        (55.0, [55.0], "one seed: no verdict yet"),
    ],
)
def test_verdict(published, accs, said):
    assert tables.verdict(published, accs) == said


def test_a_row_without_runs_never_shows_a_number_of_ours():
    results = [
        record(TUTORIAL, 0, 54.0),
        record(TUTORIAL, 1, 55.0),
        record(BN6, 0, None, kind="probe", probe_batches=256),
    ]
    text = tables.table(results, no_estimate)
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == len(ROWS)
    for line in rows:
        cell = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| `seed000_tutorial`"):
            assert cell[3] == "**54.50 ± 0.71** (2 seeds: 54.00, 55.00)"
            continue
        # ours, verdict, data, wall time: no digit anywhere but the probe's own description
        assert not re.search(r"\d", cell[4] + cell[5] + cell[7]), line
        if "bn6" in line:
            assert cell[3] == "not yet run here: probe of 256 batches"
        else:
            assert cell[3].startswith("not yet run here (not timed yet")
    assert "Of the studies' 24 published figures, 2 have been rerun" in tables.headline(results)
    assert tables.headline([]).startswith("Of the studies' 24 published figures, 0 have")


def test_verdicts_per_published_run_with_their_notes():
    results = [record(RUN1, seed, acc) for seed, acc in enumerate([57.56, 60.24, 58.62])]
    results += [record(CONV3, seed, acc) for seed, acc in enumerate([67.6, 67.1, 68.96])]
    text = tables.table(results, no_estimate)
    run1 = cells(text, "seed001_run1", RUN1.study)[4]
    assert run1 == "run 1: differs by +4.64 (note 1); run 4: reproduced"
    assert cells(text, "seed000_conv3", CONV3.study)[4] == "differs by -2.60: not explained yet"
    assert "\n1. the study ran this network more than once" in text
    headline = tables.headline(results)
    assert "3 have been rerun here over several seeds, and 1 of those are reproduced" in headline
    assert "- 001 runs 1 and 4: c1 = 16, run 1: +4.64" in headline


def test_per_class_table_and_figures(tmp_path):
    per_class = [dict.fromkeys(CLASSES, 50.0), dict.fromkeys(CLASSES, 60.0)]
    results = [record(BN6, s, 55.0, per_class=pc) for s, pc in enumerate(per_class)]
    results.append(record(TUTORIAL, 0, 54.0))  # recorded before per-class accuracies were kept
    text = tables.per_class_table(results)
    cat = next(line for line in text.splitlines() if line.startswith("| cat |"))
    # tutorial (published, ours), bn6 (published, ours), lenet3 (published, ours)
    assert [c.strip() for c in cat.strip("|").split("|")][1:] == [
        "26.1",
        tables.NO_PER_CLASS,
        "63.0",
        "55.0 ± 7.1",
        "62.1",
        tables.NO_PER_CLASS,
    ]
    paths = figures.draw_all(results, tmp_path)
    assert sorted(p.name for p in paths) == [
        "reproduce_per_class.png",
        "reproduce_seed000_width.png",
        "reproduce_seed001_c1.png",
    ]
    # No runs of the widths: only the published bars are drawn.
    ax = figures.width_figure("seed000_width", results).axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [len(b) for b in bars] == [8, 0]


def test_text_is_replaced_between_the_markers(tmp_path):
    page = tmp_path / "page.md"
    start, end = reproduce.START, reproduce.END
    page.write_text(f"# title\n\n{start}\nold table\n{end}\n\n## next\n")
    reproduce.write_between((start, end), "| new |", page)
    assert page.read_text() == f"# title\n\n{start}\n| new |\n{end}\n\n## next\n"
    page.write_text("no markers")
    with pytest.raises(ConfigError, match="markers"):
        reproduce.write_between((start, end), "| new |", page)


def test_reproduce_records_resumes_and_never_repeats(folder_data, tmp_path, monkeypatch):
    """The whole loop on tiny data: one shortened row, run, recorded, not repeated (which runs
    continue from a checkpoint: the test below); the seeds left after a first pass train as one
    fused group, each recorded as its own run."""
    row = Row(
        "seed004_lenet3", "004 (test)", (("004", 1.0),), ("trainer.max_epochs=1",), seeds=(0, 1, 2)
    )
    monkeypatch.setattr(reproduce, "ROWS", (row,))
    monkeypatch.setattr(tables, "ROWS", (row,))
    monkeypatch.setattr(figures, "ROWS", (row,))
    monkeypatch.setattr(reproduce, "RUNS", tmp_path / "runs")
    doc, readme = tmp_path / "reproducing.md", tmp_path / "README.md"
    doc.write_text("\n".join([*reproduce.PER_CLASS, reproduce.START, reproduce.END]) + "\n")
    readme.write_text("\n".join(reproduce.HEADLINE) + "\n")
    results = tmp_path / "results.json"
    args = [
        "data.source=folder",
        f"data.root={folder_data}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.batch_size=16",
        "threads=1",
        f"--out={results}",
        f"--doc={doc}",
        f"--readme={readme}",
        f"--lock={tmp_path / 'cpu.lock'}",
    ]
    assert reproduce.main([*args, "--seeds", "0"]) == 0  # a first pass: seed 0 of each row
    runs = json.loads(results.read_text())["runs"]
    assert [(r["kind"], r["seed"]) for r in runs] == [("run", 0)]
    run_dir = tmp_path / "runs" / row.slug / "seed0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert runs[0]["test_acc"] == round(metrics["test/acc"], 2)
    assert runs[0]["per_class"] == metrics["test/acc_per_class"]
    assert f"{runs[0]['test_acc']:.2f} (1 seed)" in doc.read_text()
    assert (tmp_path / "reproduce_seed000_width.png").is_file()
    assert reproduce.main(args) == 0  # the rest: seeds 1 and 2 fused
    runs = json.loads(results.read_text())["runs"]
    assert [(r["seed"], r.get("fused_members")) for r in runs] == [(0, None), (1, 2), (2, 2)]
    for r in runs[1:]:
        metrics = json.loads(
            (tmp_path / "runs" / row.slug / f"seed{r['seed']}" / "metrics.json").read_text()
        )
        assert (metrics["seed"], r["test_acc"]) == (r["seed"], round(metrics["test/acc"], 2))
        assert r["command"].endswith(f"seed={r['seed']} " + " ".join(args[:5]))
    assert "(3 seeds:" in doc.read_text() and "fused groups of 2" in doc.read_text()
    stamp = results.stat().st_mtime_ns
    assert reproduce.main(args) == 0  # nothing left: the record is kept
    assert results.stat().st_mtime_ns == stamp


def test_a_stopped_run_continues_and_rerun_repeats_a_finished_one(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    assert not reproduce.continues(tmp_path, rerun=False)  # no checkpoint: start
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (tmp_path / "metrics.json").write_text('{"status": "running"}')
    assert reproduce.continues(tmp_path, rerun=False)
    assert reproduce.continues(tmp_path, rerun=True)  # stopped during a rerun: go on
    (tmp_path / "metrics.json").write_text('{"status": "finished"}')
    assert reproduce.continues(tmp_path, rerun=False)  # its record was lost: only tested again
    assert not reproduce.continues(tmp_path, rerun=True)
    (tmp_path / "metrics.json").write_text('{"status": "diverged"}')
    assert not reproduce.continues(tmp_path, rerun=True)  # retried from scratch
    (tmp_path / "metrics.json").write_text('{"status": "runn')  # killed while writing it
    assert reproduce.continues(tmp_path, rerun=True)


def test_rows_too_long_for_a_cpu_run_only_where_a_gpu_is(monkeypatch):
    made = []

    def run_row(row, seeds, overrides, lock, rerun, probe):
        made.extend((row.experiment, seed, probe) for seed in seeds)
        return [{"row": row.key, "kind": "run", "seed": seed} for seed in seeds], []

    monkeypatch.setattr(reproduce, "run_row", run_row)
    monkeypatch.setattr(reproduce, "save_results", lambda *a: None)
    args = argparse.Namespace(
        only=["seed003_bn6"],
        seeds=[0],
        no_probes=False,
        rerun=False,
        overrides=[],
        lock=None,
        out=None,
    )
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    reproduce.run_all(args, [])
    assert made == [("seed003_bn6", 0, True)]  # a timing probe and an estimate
    made.clear()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    reproduce.run_all(args, [])
    assert made == [("seed003_bn6", 0, False)]
    made.clear()
    for cpu in ("trainer.accelerator=cpu", "++trainer.accelerator=cpu"):
        made.clear()
        args.overrides = [cpu]
        reproduce.run_all(args, [])
        assert made == [("seed003_bn6", 0, True)]


def test_merge_adds_another_machines_runs(tmp_path):
    ours = [{"row": "a", "kind": "run", "seed": 0, "test_acc": 1.0}]
    theirs = [
        {"row": "a", "kind": "run", "seed": 0, "test_acc": 2.0},
        {"row": "b", "kind": "run", "seed": 0, "test_acc": 3.0},
    ]
    (tmp_path / "gpu.json").write_text(json.dumps({"runs": theirs}))
    reproduce.merge(ours, [tmp_path / "gpu.json"])
    assert sorted((r["row"], r["test_acc"]) for r in ours) == [("a", 2.0), ("b", 3.0)]
    with pytest.raises(ConfigError, match="cannot merge .*absent.json: no such file"):
        reproduce.merge(ours, [tmp_path / "absent.json"])


def test_reproduce_rejects_an_unknown_experiment(capsys):
    assert reproduce.main(["--only", "seed999", "--table-only"]) == 2
    assert "unknown experiment(s) ['seed999']" in capsys.readouterr().err


def test_a_rows_seeds_train_as_one_sweep_and_a_failed_seed_loses_no_other(tmp_path, monkeypatch):
    """The command a row's missing seeds run as (one sweep, each seed in its own folder), what
    is recorded when one seed fails and another leaves nothing, and --rerun starting clean."""
    row = Row("seed004_lenet3", "004 (test)", (("004", 1.0),), (), seeds=(0, 1, 2))
    monkeypatch.setattr(reproduce, "ROWS", (row,))
    monkeypatch.setattr(reproduce, "RUNS", tmp_path / "runs")
    folder = tmp_path / "runs" / row.slug
    commands, found = [], []

    real_run = subprocess.run

    def run(command, **kwargs):  # seed 0 finishes, seed 1 fails, seed 2 leaves nothing
        if command[1:3] != ["-m", "src.train"]:  # platform's `uname -p`
            return real_run(command, **kwargs)
        commands.append(command)
        found.append(sorted(p.name for p in folder.iterdir()) if folder.exists() else [])
        for seed, status in ((0, "finished"), (1, "failed")):
            (folder / f"seed{seed}" / "checkpoints").mkdir(parents=True, exist_ok=True)
            (folder / f"seed{seed}" / "checkpoints" / "last.ckpt").write_bytes(b"weights")
            record = {"status": status, "test/acc": 50.0, "test/acc_per_class": {}, "epochs": 1}
            record |= {"epoch_time_s": 1.0, "wall_time_s": 3.0, "fused_members": 3}
            (folder / f"seed{seed}" / "metrics.json").write_text(json.dumps(record))
        return subprocess.CompletedProcess(command, 1)

    monkeypatch.setattr(reproduce.subprocess, "run", run)
    args = argparse.Namespace(
        only=None, seeds=None, no_probes=True, rerun=False, overrides=[], lock=None,
        out=tmp_path / "reproduce.json",
    )  # fmt: skip
    results: list[dict] = []
    assert reproduce.run_all(args, results) == 2  # seeds 1 and 2
    assert [(r["seed"], r["fused_members"]) for r in results] == [(0, 3)]
    assert results[0]["command"] == "python -m src.train experiment=seed004_lenet3 seed=0"
    command = commands[0]
    assert command[1:5] == ["-m", "src.train", "-m", "experiment=seed004_lenet3"]
    assert "seed=0,1,2" in command and "hydra.sweep.subdir=seed${seed}" in command
    assert f"hydra.sweep.dir={folder}" in command
    # Again: seed 0 is recorded; seed 1 (failed, with a checkpoint) is kept to go on from.
    assert reproduce.run_all(args, results) == 2
    assert "seed=1,2" in commands[1] and found[1] == ["seed0", "seed1"]
    args.rerun = True  # everything from scratch: no folder is left to the sweep
    assert reproduce.run_all(args, results) == 2
    assert "seed=0,1,2" in commands[2] and found[2] == []
