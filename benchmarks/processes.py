"""Whole jobs as separate processes: a sweep in parallel against one at a time, and the memory
(PSS) that one job and N parallel jobs hold."""

from __future__ import annotations

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


def sweep(base: Sequence[str], job: Sequence[str], jobs: int, parallel: int, out: Path) -> dict:
    """`jobs` training jobs (seeds 0..jobs-1) one at a time with every core, against `parallel`
    at a time with the cores split between them."""
    seeds = list(range(jobs))
    quiet = ["trainer.enable_progress_bar=false"]
    # One at a time: Hydra's own sequential multirun, in one process, every core to each job.
    sequential = run_jobs(
        [
            train_command(
                "-m",
                *base,
                *job,
                *quiet,
                f"seed={','.join(map(str, seeds))}",
                f"hydra.sweep.dir={out / 'sequential'}",
            )
        ],
        out / "sequential",
    )
    # Side by side: `parallel` processes, each running its share of the seeds on its share of
    # the cores.
    threads = max(1, available_cores() // parallel)
    shares = [seeds[i::parallel] for i in range(parallel)]
    side_by_side = run_jobs(
        [
            train_command(
                "-m",
                *base,
                *job,
                *quiet,
                f"threads={threads}",
                f"seed={','.join(map(str, share))}",
                f"hydra.sweep.dir={out / f'parallel{i}'}",
            )
            for i, share in enumerate(shares)
        ],
        out / "parallel",
    )
    return {
        "jobs": jobs,
        "job": " ".join(job),
        "parallel": parallel,
        "sequential_s": round(sequential, 2),
        "parallel_s": round(side_by_side, 2),
        "ratio": round(side_by_side / sequential, 3),
    }


def smaps_pss(pid: int, data_dir: Path) -> tuple[int, int, int]:
    """(PSS of the whole process, PSS and RSS of its mappings of files under data_dir), bytes."""
    with open(f"/proc/{pid}/smaps_rollup") as file:
        total = next(int(line.split()[1]) for line in file if line.startswith("Pss:"))
    data_pss = data_rss = 0
    in_data = False
    prefix = str(data_dir.resolve())
    with open(f"/proc/{pid}/smaps") as file:
        for line in file:
            fields = line.split()
            if "-" in fields[0] and ":" not in fields[0]:  # a mapping's header line
                in_data = len(fields) >= 6 and fields[5].startswith(prefix)
            elif in_data and fields[0] == "Pss:":
                data_pss += int(fields[1])
            elif in_data and fields[0] == "Rss:":
                data_rss += int(fields[1])
    return total * KB, data_pss * KB, data_rss * KB


def peak_memory(
    commands: Sequence[list[str]], data_dir: Path, log_dir: Path, interval: float = 0.2
) -> dict:
    """Start the commands side by side and sample their PSS while all of them run.

    The sample kept is the one where the jobs' mappings of the cached data set are largest
    (every page of it read); there, the data's PSS summed over the jobs says how many copies
    of those pages the machine holds: 1.0 means one copy, shared.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = [open(log_dir / f"job{i}.log", "w") for i in range(len(commands))]  # noqa: SIM115
    procs = [
        subprocess.Popen(c, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        for c, log in zip(commands, logs, strict=True)
    ]
    best: tuple[int, ...] | None = None
    while all(p.poll() is None for p in procs):
        try:
            samples = [smaps_pss(p.pid, data_dir) for p in procs]
        except (OSError, StopIteration):  # a job ended between poll() and the read
            break
        total, data_pss, data_rss = (sum(s[i] for s in samples) for i in range(3))
        largest_rss = max(s[2] for s in samples)
        if best is None or data_pss > best[1] or (data_pss == best[1] and total > best[0]):
            best = (total, data_pss, largest_rss, max(s[0] for s in samples))
        time.sleep(interval)
    for proc in procs:
        proc.wait()
    for log in logs:
        log.close()
    bad = [i for i, p in enumerate(procs) if p.returncode]
    if bad:
        raise RuntimeError(f"memory jobs {bad} failed (logs in {log_dir})")
    if best is None:
        raise RuntimeError("the jobs ended before their memory could be sampled")
    total, data_pss, largest_rss, largest_job = best
    mb = 1 / 2**20
    return {
        "jobs": len(commands),
        "pss_total_mb": round(total * mb, 1),
        "pss_largest_job_mb": round(largest_job * mb, 1),
        "data_pss_total_mb": round(data_pss * mb, 1),
        "data_resident_one_job_mb": round(largest_rss * mb, 1),
        "data_copies": round(data_pss / largest_rss, 3) if largest_rss else None,
    }


def memory(base: Sequence[str], job: Sequence[str], jobs: int, data_dir: Path, out: Path) -> dict:
    """PSS of one training job alone, then of `jobs` of the same job side by side."""
    threads = max(1, available_cores() // jobs)
    command = train_command(*base, *job, f"threads={threads}", "trainer.enable_progress_bar=false")
    one = peak_memory([[*command, f"hydra.run.dir={out / 'one'}"]], data_dir, out / "one")
    many = peak_memory(
        [[*command, f"seed={i}", f"hydra.run.dir={out / f'many{i}'}"] for i in range(jobs)],
        data_dir,
        out / "many",
    )
    return {"job": " ".join(job), "one": one, "parallel": many}
