"""make gpu-check, as far as a machine without CUDA can check it: every step's commands compose,
the results are written, and without CUDA it stops with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check
from src import reproduce
from src.studies.rows import ROWS
from tests.conftest import ROOT, compose_config

CONFIGS = {"src.train": "train", "src.eval": "eval", "src.predict": "predict"}


def test_every_step_command_composes_with_hydra(tmp_path):
    steps = gpu_check.plan(tmp_path / "data", tmp_path / "out", tmp_path / "runs")
    assert [s.key for s in steps] == list("abcdefghi")
    assert [s.key for s in steps if s.on_request] == ["i"]  # long: only when named
    composed = 0
    for step in steps:
        assert not step.env or len(step.env) == len(step.commands), step.key
        for command in step.commands:
            assert command[0] == sys.executable
            if command[2] == "src.reproduce":
                rows = [r for r in ROWS if r.experiment in command]
                overrides = [o for o in command[3:] if "=" in o and not o.startswith("--")]
                assert {r.experiment for r in rows} == {"seed002_model3", "seed003_bn6"}
                for row in rows:
                    assert reproduce.recipe(row, overrides).trainer.accelerator == "gpu"
                continue
            if command[2] not in CONFIGS:
                continue  # benchmarks.gpu: its own arguments
            overrides = [o for o in command[3:] if o != "-m" and not o.startswith("hydra.")]
            # A sweep's list composes as its first value.
            overrides = [o.split(",")[0] if o.startswith("seed=") else o for o in overrides]
            compose_config(CONFIGS[command[2]], overrides, tmp_path / "compose")
            composed += 1
    assert composed == 21  # every command but benchmarks.gpu and src.reproduce


def test_results_are_written_as_json_and_a_table(tmp_path):
    result = {
        "step": "a", "title": "default run", "commands": ["-m src.train trainer.max_epochs=2"],
        "status": "failed", "figures": {"gpu_test_acc": 51.2}, "time_s": 12.5,
        "exit_codes": [1], "error_tail": "CUDA error: out of memory",
    }  # fmt: skip
    gpu_check.write_results(tmp_path, {"device": "NVIDIA H200", "commit": "abc"}, [result])
    saved = json.loads((tmp_path / "check.json").read_text())
    assert saved["device"] == "NVIDIA H200" and saved["steps"][0]["figures"]["gpu_test_acc"] == 51.2
    table = (tmp_path / "check.md").read_text()
    assert "| a | failed | 12.5 | default run |" in table
    assert "CUDA error: out of memory" in table


@pytest.mark.skipif(
    subprocess.run(
        [sys.executable, "-c", "import torch; assert not torch.cuda.is_available()"]
    ).returncode,
    reason="this machine has CUDA",
)
def test_without_cuda_gpu_check_says_so_in_one_line(tmp_path):
    done = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "GPU_PY": sys.executable, "HOME": str(tmp_path)},
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "no CUDA GPU" in done.stderr
    assert not Path(tmp_path, ".cache").exists()  # nothing installed or unpacked


def test_the_sweep_step_reads_the_launchers_own_lines(tmp_path):
    """Step (g)'s judge against the launcher's own lines (its format string, its group line)."""
    import logging

    from hydra_plugins.cifar10_lab_launcher import fusion, parallel_launcher

    steps = {s.key: s for s in gpu_check.plan(tmp_path / "d", tmp_path / "out", tmp_path / "runs")}
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    log = parallel_launcher.log
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        for n in (4, 2):
            log.info(parallel_launcher.LAUNCHING + ", into %s", n, n, n, "x")
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    gpu_log, cpu_log = records
    cpu_log += " (cpu, cores 0-7, pid 1) (cpu, cores 8-15, pid 2)"
    names = [f"seed={s}" for s in range(1, 5)]
    (fused_log,) = fusion.describe([[0, 1, 2, 3]], names, [{}] * 4, 16)
    for s in range(1, 5):
        run = tmp_path / "runs" / "g_fused_sweep" / f"seed={s}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text('{"status": "finished", "test/acc": 40.0}')
    done = [subprocess.CompletedProcess([], 0, out, "") for out in (gpu_log, cpu_log, fused_log)]
    passed, figures = steps["g"].judge(done)
    assert passed, figures
    assert figures["fused_test_acc"] == [40.0] * 4
