"""Sweeps on a running SLURM cluster (scripts/slurm.sh: one node, this machine).

Submitted, queued, run, polled and collected by a real slurmctld and slurmd: `make slurm-up` first
(CI does), or these tests start the cluster themselves where they can (root, Debian's slurm-wlm
and munge installed) and stop it afterwards; elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli, tiny_overrides

pytestmark = pytest.mark.slurm
SCRIPT = ROOT / "scripts" / "slurm.sh"


def cluster_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    return subprocess.run(["sinfo", "--noheader"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def slurm():
    """A running cluster: the one already up, or one started here (and stopped after)."""
    started = False
    if not cluster_answers():
        up = subprocess.run(["bash", str(SCRIPT), "up"], capture_output=True, text=True)
        lines = (up.stderr or up.stdout).strip().splitlines()
        if up.returncode != 0 or not cluster_answers():
            pytest.skip(f"no SLURM cluster: {lines[-1] if lines else 'scripts/slurm.sh up failed'}")
        started = True
    yield
    if started:
        subprocess.run(["bash", str(SCRIPT), "down"], capture_output=True)


def slurm_args(tmp_path: Path, data: Path, *extra: str, launcher: str = "slurm") -> list[str]:
    # One core per job: two jobs at once on a 2-core node.
    return [
        "-m",
        f"hydra/launcher={launcher}",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.poll_s=0.5",
        *tiny_overrides(tmp_path, data),
        *extra,
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]


def jobs_of(sweep: Path) -> dict:
    return json.loads((sweep / "summary.json").read_text())["jobs"]


def metrics(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


def test_a_sweep_runs_as_a_slurm_job_array(slurm, folder_data, tmp_path):
    args = slurm_args(tmp_path, folder_data, "seed=1,2,3")
    result = run_cli("src.train", *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweep = tmp_path / "sweep"
    jobs = jobs_of(sweep)
    assert sorted(jobs) == ["seed=1", "seed=2", "seed=3"]
    for name, job in jobs.items():
        assert job["status"] == "finished" and "_" in job["slurm_job_id"]  # an array task
        record = metrics(sweep / name)
        assert record["status"] == "finished" and record["epochs"] == 2
    # Quiet while it ran: no sacct polling (this cluster has no accounting).
    assert "sacct" not in result.stdout + result.stderr
    report = run_cli("src.report", str(sweep))
    assert report.returncode == 0, report.stderr[-2000:]
    assert (sweep / "report" / "report.md").read_text().count("seed=") >= 3


# Slow: .ci/run runs it with the other slow SLURM tests; the failure bookkeeping it shares with
# the parallel launcher is tested in make test (tests/test_sweeps.py).
@pytest.mark.slow
def test_a_failing_job_is_recorded_and_the_others_finish(slurm, folder_data, tmp_path):
    args = slurm_args(
        tmp_path,
        folder_data,
        "trainer.max_epochs=1",
        "model=convnet",
        "model.kernel_size=7",
        "model.base_width=4",
        "model.depth=2,6",
    )
    result = run_cli("src.train", *args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "1 of 2 sweep jobs did not finish (depth=6)" in result.stderr
    jobs = jobs_of(tmp_path / "sweep")
    assert jobs["depth=2"]["status"] == "finished"
    assert jobs["depth=6"]["status"] == "failed"
    assert jobs["depth=6"]["error"].startswith("GeometryError: conv6 (kernel 7")
    assert "conv6" in metrics(tmp_path / "sweep" / "depth=6")["error"]


def test_a_request_the_cluster_cannot_meet_is_one_line(slurm, folder_data, tmp_path):
    # This cluster's node has no GPU: asking for one names the setting to change.
    args = slurm_args(tmp_path, folder_data, "hydra.launcher.gpus_per_node=1")
    result = run_cli("src.train", *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert not (tmp_path / "sweep").exists()
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("[ERROR] hydra.launcher.gpus_per_node=1, but the nodes of partition")
    )
    # sbatch's own refusal (a gres this cluster does not know), and no debris left behind.
    args = slurm_args(tmp_path, folder_data, "hydra.launcher.gres=gpu:1")
    result = run_cli("src.train", *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "[ERROR] sbatch refused the sweep's jobs (Invalid generic resource (gres) "
        "specification): change hydra.launcher.gpus_per_node (or gres)"
    ]
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_a_ddp_job_gets_its_ranks_from_slurm(slurm, folder_data, tmp_path):
    args = slurm_args(
        tmp_path,
        folder_data,
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "seed=5",
        launcher="slurm_ddp",
    )
    result = run_cli("src.train", *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweep = tmp_path / "sweep"
    job = jobs_of(sweep)["job0"]
    assert job["status"] == "finished" and metrics(sweep / "job0")["status"] == "finished"
    # One SLURM job whose two tasks (srun) are the two ranks, talking over gloo.
    folder = sweep / ".submitit" / job["slurm_job_id"]
    ranks = [  # Lightning's lines go through Hydra's console handler (stdout), or to stderr
        "".join(
            (folder / f"{job['slurm_job_id']}_{task}_log.{ext}").read_text()
            for ext in "out err".split()
        )
        for task in (0, 1)
    ]
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in ranks[0] and "GLOBAL_RANK: 1, MEMBER: 2/2" in ranks[1]
    assert "distributed_backend=gloo" in ranks[0]
    assert "All distributed processes registered. Starting with 2 processes" in ranks[0]


@pytest.mark.slow  # a minute: two launches, one stopped halfway
def test_a_pre_empted_job_resumes_when_the_sweep_is_relaunched(slurm, folder_data, tmp_path):
    args = slurm_args(tmp_path, folder_data, "trainer.max_epochs=30", "seed=7")
    sweep, job_dir = tmp_path / "sweep", tmp_path / "sweep" / "job0"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "src.train", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (job_dir / "checkpoints" / "last.ckpt").exists():
        time.sleep(0.5)
    job_id = jobs_of(sweep)["job0"]["slurm_job_id"]
    # What SLURM sends a job it pre-empts (or at its time limit): SIGTERM to its processes.
    subprocess.run(["scancel", "--signal=TERM", job_id], check=True)
    out, _ = launcher.communicate(timeout=120)
    assert launcher.returncode == 1, out[-3000:]
    stopped = metrics(job_dir)
    assert stopped["status"] == "interrupted" and stopped["error"] == "interrupted by SIGTERM"
    assert jobs_of(sweep)["job0"]["status"] == "interrupted"

    result = run_cli("src.train", *args)  # the same sweep again
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resuming job0 from its last checkpoint" in result.stdout
    done = metrics(job_dir)
    assert done["status"] == "finished" and done["epochs"] == 30
    assert done["resumed_from"] == str(job_dir / "checkpoints" / "last.ckpt")
