"""Sweeps end to end on tiny data: the parallel launcher, failures, relaunch, DDP, SLURM (the Optuna
search: test_hparams_search.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import read_write

import src.train
from src.distributed import check_ddp_launch
from src.errors import ConfigError
from tests.conftest import ROOT, compose_config, run_cli, run_entry, tiny_overrides


def sweep_args(tmp_path: Path, data: Path, *extra: str, folder: str = "sweep") -> list[str]:
    return [
        "-m",
        *tiny_overrides(tmp_path, data),
        "trainer.max_epochs=1",
        *extra,
        f"hydra.sweep.dir={tmp_path / folder}",
    ]


def summary(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "summary.json").read_text())


def most_at_once(jobs: list[dict]) -> int:
    return max(sum(j["started"] <= job["started"] < j["ended"] for j in jobs) for job in jobs)


@pytest.mark.slow
def test_four_jobs_on_two_fake_gpus_run_two_at_a_time(folder_data, tmp_path):
    args = sweep_args(
        tmp_path,
        folder_data,
        "model.c1=2,4",
        "seed=1,2",
        "hydra.launcher.devices=[7,9]",
        "hydra.launcher.fuse=off",  # slots, not fusion, are under test
    )
    result = run_cli("src.train", *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = summary(tmp_path / "sweep")["jobs"]
    assert sorted(jobs) == ["c1=2,seed=1", "c1=2,seed=2", "c1=4,seed=1", "c1=4,seed=2"]
    for name, job in jobs.items():
        run = tmp_path / "sweep" / name
        metrics = json.loads((run / "metrics.json").read_text())
        assert job["status"] == metrics["status"] == "finished"
        # The job's own process saw exactly the GPU it was given, and returned its metric.
        assert job["visible_devices"] == job["device"] and job["device"] in {"7", "9"}
        assert job["return_value"] == metrics["val/acc_best"] is not None
        assert (run / "checkpoints" / "best.ckpt").exists() and (run / "config.yaml").exists()
        assert any((run / "tensorboard").glob("events.out.tfevents.*"))
    # One worker process per device, started once, served both of its jobs.
    pids = {device: {j["pid"] for j in jobs.values() if j["device"] == device} for device in "79"}
    assert (
        all(len(p) == 1 for p in pids.values()) and len(pids["7"] | pids["9"] | {os.getpid()}) == 3
    )
    assert most_at_once(list(jobs.values())) == 2
    for device in ("7", "9"):  # one job at a time on each device
        assert most_at_once([j for j in jobs.values() if j["device"] == device]) == 1


def test_a_failing_job_is_recorded_and_the_others_finish(folder_data, tmp_path):
    args = sweep_args(
        tmp_path,
        folder_data,
        "model=convnet",
        "model.kernel_size=7",
        "model.depth=2,6",
        "model.base_width=4",
    )
    result = run_cli("src.train", *args, python_flags=["-X", "importtime"])
    # The launching process composes configs and hands them to its workers: torch and Lightning
    # (seconds to import) are theirs alone, even where resolvers count GPUs and conv widths.
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "src.cli" in imported and not imported & {"torch", "lightning"}
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "1 of 2 sweep jobs did not finish (depth=6)" in result.stderr
    assert "GeometryError: conv6" in result.stderr
    assert "Error executing job" not in result.stderr  # the launcher's line says it all
    jobs = summary(tmp_path / "sweep")["jobs"]
    assert jobs["depth=2"]["status"] == "finished" and jobs["depth=2"]["return_value"] is not None
    assert jobs["depth=6"]["status"] == "failed"
    assert jobs["depth=6"]["error"].startswith("GeometryError: conv6 (kernel 7")
    failed = json.loads((tmp_path / "sweep" / "depth=6" / "metrics.json").read_text())
    assert failed["status"] == "failed" and "conv6" in failed["error"]


def test_an_interrupted_sweep_relaunched_runs_only_what_did_not_finish(folder_data, tmp_path):
    args = sweep_args(tmp_path, folder_data, "model.c1=2,3,4")
    sweep_dir = tmp_path / "sweep"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "src.train", *args, "hydra.launcher.cpu_jobs=1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline:  # Ctrl-C once the first job finished and the second runs
        jobs = summary(sweep_dir)["jobs"] if (sweep_dir / "summary.json").exists() else {}
        if jobs.get("c1=3", {}).get("status") == "running":
            break
        time.sleep(0.2)
    launcher.send_signal(signal.SIGINT)
    output = launcher.communicate(timeout=120)[0]
    assert launcher.returncode == 130, output[-3000:]
    assert "hydra.sweep.dir=" in output
    jobs = summary(sweep_dir)["jobs"]
    assert [jobs[n]["status"] for n in ("c1=2", "c1=3", "c1=4")] == [
        "finished",
        "interrupted",
        "pending",
    ]
    with pytest.raises(ProcessLookupError):  # Ctrl-C stopped the job's process
        os.kill(jobs["c1=3"]["pid"], 0)
    first = sweep_dir / "c1=2" / "metrics.json"
    before = (first.stat().st_mtime_ns, jobs["c1=2"]["pid"])

    # The same sweep, two jobs at a time now (launcher settings are not part of a sweep).
    result = run_cli("src.train", *args, "hydra.launcher.cpu_jobs=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = summary(sweep_dir)["jobs"]
    assert {n: j["status"] for n, j in jobs.items()} == dict.fromkeys(jobs, "finished")
    assert jobs["c1=2"]["skipped"] and (first.stat().st_mtime_ns, jobs["c1=2"]["pid"]) == before
    assert not jobs["c1=3"].get("skipped") and not jobs["c1=4"].get("skipped")


@pytest.mark.slow
def test_a_relaunch_continues_an_unfinished_job_from_its_checkpoint(folder_data, tmp_path):
    args = sweep_args(tmp_path, folder_data, "model.c1=2,3", "scheduler=none")
    assert run_cli("src.train", *args).returncode == 0
    # As a job killed after its first epoch's checkpoint leaves it:
    record = tmp_path / "sweep" / "c1=2" / "metrics.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "status": "failed"}))

    longer = [a.replace("trainer.max_epochs=1", "trainer.max_epochs=2") for a in args]
    result = run_cli("src.train", *longer)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resuming c1=2 from its last checkpoint" in result.stdout + result.stderr
    resumed = json.loads(record.read_text())
    assert resumed["status"] == "finished" and resumed["epochs"] == 2
    assert resumed["resumed_from"].endswith("c1=2/checkpoints/last.ckpt")
    assert summary(tmp_path / "sweep")["jobs"]["c1=3"]["skipped"]


def test_launcher_settings_that_leave_no_slot_fail_in_one_line(folder_data, tmp_path, capsys):
    args = sweep_args(
        tmp_path,
        folder_data,
        "seed=1,2",
        "hydra.launcher.devices=[0]",
        "hydra.launcher.devices_per_job=2",
    )
    status, output = run_entry(src.train.main, *args, capsys=capsys)  # fails before any job
    assert status == 1 and "Traceback" not in output
    assert output.strip().splitlines()[-1] == (
        "[ERROR] cannot start the sweep: each job wants 2 GPUs but only 1 are visible (0): lower "
        "trainer.devices or hydra.launcher.devices_per_job"
    )


def sbatch_script(cfg, tmp_path: Path, monkeypatch) -> str:
    """The sbatch file hydra-submitit-launcher would submit for this config (no SLURM needed:
    a stand-in srun on PATH satisfies submitit's check; parameters mapped as the plugin does)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    (tmp_path / "bin").mkdir(parents=True)
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    from hydra_plugins.cifar10_lab_launcher.slurm_launcher import Nodes, fit_to

    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    for own in ("_target_", "skip_finished", "resume_key", "metric", "poll_s"):
        del params[own]
    params = fit_to(params, Nodes("gpu", cpus=32, mem_mb=256000, gpus=4))  # as sinfo reports
    executor = submitit.AutoExecutor(
        folder=params.pop("submitit_folder"),
        cluster="slurm",
        slurm_max_num_timeout=params.pop("max_num_timeout"),
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    return executor._executor._make_submission_file_text("python -m src.train", "uid")


def test_slurm_configs_compose(tmp_path, monkeypatch):
    cfg = compose_config(
        "train",
        ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path}"],
        tmp_path / "run",
    )
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    script = sbatch_script(cfg, tmp_path, monkeypatch)
    for line in (
        "--gpus-per-node=1",
        "--ntasks-per-node=1",
        "--partition=gpu",
        "--cpus-per-task=8",
    ):
        assert f"#SBATCH {line}\n" in script
    cfg = compose_config(
        "train",
        [
            "hydra/launcher=slurm_ddp",
            "trainer=ddp",
            "trainer.devices=4",
            f"hydra.sweep.dir={tmp_path}",
        ],
        tmp_path / "run",
    )
    assert cfg.trainer.strategy._target_.endswith("DDPStrategy")
    # One SLURM task per GPU: Lightning takes its ranks from SLURM and relaunches nothing.
    script = sbatch_script(cfg, tmp_path / "ddp", monkeypatch)
    for line in ("--gpus-per-node=4", "--ntasks-per-node=4", "--nodes=1"):
        assert f"#SBATCH {line}\n" in script


@pytest.mark.parametrize("launcher", ["basic", "parallel"])
def test_ddp_under_a_multirun_only_with_a_launcher_that_isolates_jobs(launcher, tmp_path):
    cfg = compose_config(
        "train",
        ["trainer=ddp", "trainer.accelerator=cpu", f"hydra/launcher={launcher}"],
        tmp_path / "run",
    )
    with read_write(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    if launcher == "basic":
        with pytest.raises(ConfigError, match="re-run the whole sweep"):
            check_ddp_launch(trainer)
    else:
        check_ddp_launch(trainer)


@pytest.mark.slow
def test_a_ddp_job_in_a_sweep_runs_its_ranks_without_rerunning_the_sweep(folder_data, tmp_path):
    args = sweep_args(tmp_path, folder_data, "trainer=ddp", "trainer.devices=2", "seed=5")
    result = run_cli("src.train", *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = summary(tmp_path / "sweep")["jobs"]
    # One job (nothing swept: named by its number), its two ranks in one folder, no second sweep.
    assert list(jobs) == ["job0"] and jobs["job0"]["status"] == "finished"
    console = (tmp_path / "sweep" / "job0" / "console.log").read_text()
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in console
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == [
        "job0",
        "multirun.yaml",
        "summary.json",
    ]
