"""Whole jobs as separate processes: a sweep in parallel against one at a time, and the memory
(PSS) that one job and N parallel jobs hold."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from src.run import available_cores

ROOT = Path(__file__).resolve().parents[1]
KB = 1024


def train_command(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "src.train", *overrides]


def run_jobs(commands: Sequence[list[str]], log_dir: Path) -> float:
    """Run the commands side by side; wall seconds until the last one ends. Fails loudly."""
    log_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    procs = []
    for i, command in enumerate(commands):
        log = open(log_dir / f"job{i}.log", "w")  # noqa: SIM115 (closed below)
        procs.append(
            (subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log)
        )
    failed = []
    for i, (proc, log) in enumerate(procs):
        if proc.wait():
            failed.append(f"job {i} exited with {proc.returncode} (log: {log_dir / f'job{i}.log'})")
        log.close()
    if failed:
        raise RuntimeError("; ".join(failed))
    return time.perf_counter() - start


# How a sweep's jobs run: the parallel launcher (hydra_plugins/cifar10_lab_launcher), with its
# default slots (one job per core, the cores split between the jobs) and one job at a time (each
# job gets every core); and Hydra's basic launcher (one at a time, in the launching process).
SWEEP_WAYS = {
    "parallel": ["hydra.launcher.devices=cpu"],
    "one_at_a_time": ["hydra.launcher.devices=cpu", "hydra.launcher.cpu_jobs=1"],
    "basic_launcher": ["hydra/launcher=basic"],
}


def sweep(base: Sequence[str], job: Sequence[str], jobs: int, out: Path) -> dict:
    """Wall time of one sweep of `jobs` jobs (seeds 0..jobs-1) run each way of SWEEP_WAYS."""
    seeds = ",".join(map(str, range(jobs)))
    wall = {}
    for way, launcher in SWEEP_WAYS.items():
        command = train_command(
            "-m",
            *base,
            *job,
            "trainer.enable_progress_bar=false",
            f"seed={seeds}",
            *launcher,
            f"hydra.sweep.dir={out / way}",
        )
        wall[way] = run_jobs([command], out / f"{way}-logs")
    return {
        "jobs": jobs,
        "job": " ".join(job),
        "parallel_slots": available_cores(),
        **{f"{way}_s": round(seconds, 2) for way, seconds in wall.items()},
        "ratio": round(wall["parallel"] / wall["one_at_a_time"], 3),
        "ratio_to_basic_launcher": round(wall["parallel"] / wall["basic_launcher"], 3),
    }


def smaps_pss(pid: int, data_file: Path) -> tuple[int, int, int]:
    """(PSS of the whole process, PSS and RSS of its mappings of data_file), in bytes."""
    with open(f"/proc/{pid}/smaps_rollup") as file:
        total = next(int(line.split()[1]) for line in file if line.startswith("Pss:"))
    data_pss = data_rss = 0
    in_data = False
    target = str(data_file.resolve())
    with open(f"/proc/{pid}/smaps") as file:
        for line in file:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header line
                in_data = len(fields) >= 6 and " ".join(fields[5:]) == target
            elif in_data and fields[0] == "Pss:":
                data_pss += int(fields[1])
            elif in_data and fields[0] == "Rss:":
                data_rss += int(fields[1])
    return total * KB, data_pss * KB, data_rss * KB


def peak_memory(
    commands: Sequence[list[str]], data_file: Path, log_dir: Path, interval: float = 0.2
) -> dict:
    """Start the commands side by side and sample their memory while all of them run.

    PSS (proportional set size) charges each shared page to the processes mapping it in equal
    parts, so the PSS of `data_file` summed over every process that maps it (the jobs, and this
    benchmark, which maps the same cache) is the memory its pages take: one copy when they are
    shared, one per job when each job had its own. Reported at their peaks over the samples:
    the jobs' summed PSS, the data file's pages resident in every job (each job has read all
    of it), and the copies of it held (that summed data PSS over the file's size).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = [open(log_dir / f"job{i}.log", "w") for i in range(len(commands))]  # noqa: SIM115
    procs = [
        subprocess.Popen(c, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        for c, log in zip(commands, logs, strict=True)
    ]
    pss_jobs = largest_job = resident_in_each = data_pss = samples = 0
    while all(p.poll() is None for p in procs):
        try:
            jobs = [smaps_pss(p.pid, data_file) for p in procs]
        except (OSError, StopIteration):  # a job ended between poll() and the read
            break
        samples += 1
        pss_jobs = max(pss_jobs, sum(j[0] for j in jobs))
        largest_job = max(largest_job, *(j[0] for j in jobs))
        resident_in_each = max(resident_in_each, min(j[2] for j in jobs))
        data_pss = max(data_pss, sum(j[1] for j in jobs) + smaps_pss(os.getpid(), data_file)[1])
        time.sleep(interval)
    for proc in procs:
        proc.wait()
    for log in logs:
        log.close()
    failed = [i for i, p in enumerate(procs) if p.returncode]
    if failed:
        raise RuntimeError(f"memory jobs {failed} failed (logs in {log_dir})")
    if not samples:
        raise RuntimeError("the jobs ended before their memory could be sampled")
    mb = 1 / 2**20
    size = data_file.stat().st_size
    return {
        "jobs": len(commands),
        "pss_jobs_mb": round(pss_jobs * mb, 1),
        "pss_largest_job_mb": round(largest_job * mb, 1),
        "data_file_mb": round(size * mb, 1),
        "data_resident_in_each_job_mb": round(resident_in_each * mb, 1),
        "data_pss_mb": round(data_pss * mb, 1),
        "data_copies": round(data_pss / size, 3),
    }


def memory(base: Sequence[str], job: Sequence[str], jobs: int, data_file: Path, out: Path) -> dict:
    """Memory of one training job alone, then of `jobs` of the same job side by side."""
    threads = max(1, available_cores() // jobs)
    command = train_command(*base, *job, f"threads={threads}", "trainer.enable_progress_bar=false")
    one = peak_memory([[*command, f"hydra.run.dir={out / 'one'}"]], data_file, out / "one")
    many = peak_memory(
        [[*command, f"seed={i}", f"hydra.run.dir={out / f'many{i}'}"] for i in range(jobs)],
        data_file,
        out / "many",
    )
    return {"job": " ".join(job), "one": one, "parallel": many}
