"""Whole jobs as separate processes: a sweep in parallel against one at a time, and the memory
(PSS) that one job and N parallel jobs hold."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from src.threads import available_cores

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
SWEEP_WAYS = {  # unfused: one process per job is what this compares
    "parallel": ["hydra.launcher.devices=cpu", "hydra.launcher.fuse=off"],
    "one_at_a_time": [
        "hydra.launcher.devices=cpu",
        "hydra.launcher.cpu_jobs=1",
        "hydra.launcher.fuse=off",
    ],
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


@dataclass
class Mapped:
    """A process's memory, and its share of one mapped file, in bytes (from /proc/PID/smaps)."""

    pss: int  # the whole process's proportional set size
    file_pss: int  # the file's pages, each charged in equal parts to the processes mapping it
    file_rss: int  # the file's pages resident in this process
    file_private: int  # pages of it copied into this process (anonymous: written to)


def smaps(pid: int, data_file: Path) -> Mapped:
    """`pid`'s PSS (smaps_rollup) and how it maps `data_file` (its entries in smaps)."""
    with open(f"/proc/{pid}/smaps_rollup") as file:
        pss = next(int(line.split()[1]) for line in file if line.startswith("Pss:"))
    fields = {"Pss:": 0, "Rss:": 0, "Anonymous:": 0}
    in_data = False
    target = str(data_file.resolve())
    with open(f"/proc/{pid}/smaps") as file:
        for line in file:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):  # a mapping's header line
                in_data = len(parts) >= 6 and " ".join(parts[5:]) == target
            elif in_data and parts[0] in fields:
                fields[parts[0]] += int(parts[1])
    return Mapped(pss * KB, fields["Pss:"] * KB, fields["Rss:"] * KB, fields["Anonymous:"] * KB)


def peak_memory(
    commands: Sequence[list[str]], data_file: Path, log_dir: Path, interval: float = 0.2
) -> dict:
    """Start the commands side by side and sample their memory while all of them run.

    Reported at their peaks over the samples: the jobs' summed PSS (proportional set size:
    shared pages charged in equal parts to the processes sharing them), the data file's pages
    resident in every job (each job has read all of it), its PSS per job, and the copies of it
    the machine holds: the page cache's one copy, which every job maps, plus the pages any job
    copied for itself (anonymous pages of the mapping, made by writing to it). 1.0 means shared.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = [open(log_dir / f"job{i}.log", "w") for i in range(len(commands))]  # noqa: SIM115
    procs = [
        subprocess.Popen(c, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        for c, log in zip(commands, logs, strict=True)
    ]
    peak = {"pss": 0, "largest": 0, "resident": 0, "file_pss": 0, "held": 0}
    samples = 0
    while all(p.poll() is None for p in procs):
        try:
            jobs = [smaps(p.pid, data_file) for p in procs]
        except (OSError, StopIteration):  # a job ended between poll() and the read
            break
        samples += 1
        shared = max(j.file_rss - j.file_private for j in jobs)  # the page cache's pages
        now = {
            "pss": sum(j.pss for j in jobs),
            "largest": max(j.pss for j in jobs),
            "resident": min(j.file_rss for j in jobs),
            "file_pss": max(j.file_pss for j in jobs),
            "held": shared + sum(j.file_private for j in jobs),
        }
        peak = {key: max(peak[key], now[key]) for key in peak}
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
        "pss_jobs_mb": round(peak["pss"] * mb, 1),
        "pss_largest_job_mb": round(peak["largest"] * mb, 1),
        "data_file_mb": round(size * mb, 1),
        "data_resident_in_each_job_mb": round(peak["resident"] * mb, 1),
        "data_pss_per_job_mb": round(peak["file_pss"] * mb, 1),
        "data_copies": round(peak["held"] / size, 3),
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
