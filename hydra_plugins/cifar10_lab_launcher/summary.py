"""The sweep summary (summary.json in the sweep folder) and the jobs' own metrics.json.

The summary is rewritten atomically whenever a job starts or ends, so a sweep stopped halfway
keeps the record of every job that finished. Each job's metrics.json is written by the job
itself (src/training.py); the launcher only reads it, except to mark a job whose process died
without saying so (killed, out of memory) as failed.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import CompactHydraException

from src.files import write_json

log = logging.getLogger(__name__)

FINISHED = "finished"
# A process that dies without a word leaves its metrics.json saying this.
RUNNING = "running"


def read_metrics(job_dir: Path) -> dict[str, Any]:
    """The job's metrics.json, or {} when it has none (or a damaged one)."""
    try:
        data = json.loads((job_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def left_unfinished(job_dir: Path) -> bool:
    """An earlier launch left this job unfinished with a checkpoint to continue from (its record
    says so, or is missing or damaged: the job was killed before or while writing it)."""
    return (job_dir / "checkpoints" / "last.ckpt").is_file() and read_metrics(job_dir).get(
        "status"
    ) != FINISHED


def mark_dead(job_dir: Path, error: str) -> None:
    """A job that died without recording its end (SIGKILL, OOM killer) is failed, not running."""
    metrics = read_metrics(job_dir)
    if metrics.get("status") == RUNNING:
        write_json(job_dir / "metrics.json", {**metrics, "status": "failed", "error": error})


class Summary:
    """summary.json: the sweep's jobs by folder name, merged with what earlier launches left."""

    def __init__(self, sweep_dir: Path, swept: list[str]):
        self.path = sweep_dir / "summary.json"
        old = {}
        if self.path.exists():
            try:
                old = json.loads(self.path.read_text())
            except ValueError:
                old = {}
        self.data: dict[str, Any] = {
            "sweep_dir": str(sweep_dir),
            "swept": swept,
            "jobs": old.get("jobs", {}),
        }

    def update(self, name: str, **fields: Any) -> None:
        job = self.data["jobs"].setdefault(name, {})
        job.update(fields)
        self.save()

    def record(self, job: Any, **fields: Any) -> None:
        """Update a launcher's job (num, name, params, overrides, dir: both launchers' Job)."""
        self.update(
            job.name,
            num=job.num,
            dir=job.name,
            params=job.params,
            overrides=filter_overrides(job.overrides),
            **fields,
        )

    def report_end(self, jobs: list[Any]) -> list[Any]:
        """Log the sweep's closing line (how many jobs finished, which did not, where the summary
        is) and return the jobs that did not finish."""
        failed = [job for job in jobs if not job.result.get("ok")]
        log.info(
            "%d of %d jobs finished%s; summary: %s",
            len(jobs) - len(failed),
            len(jobs),
            f", {len(failed)} did not ({', '.join(j.name for j in failed)})" if failed else "",
            self.path,
        )
        return failed

    def job_return(self, job: Any, failed: list[Any], total: int, **fields: Any) -> JobReturn:
        """job_return for a launcher's job (both launchers' Job), naming this summary."""
        return job_return(
            job.name,
            job.result,
            [j.name for j in failed],
            total,
            self.path,
            overrides=job.overrides,
            working_dir=str(job.dir),
            **fields,
        )

    def reuse_finished(self, job: Any, metric: str | None) -> bool:
        """A relaunch: when the job's folder already holds a finished run, its result (`metric`
        of its metrics.json) becomes the job's and the job is recorded as skipped."""
        metrics = read_metrics(job.dir)
        if metrics.get("status") != FINISHED:
            return False
        value = metrics.get(metric) if metric else None
        job.result = {"ok": True, "status": FINISHED, "return_value": value}
        self.record(job, status=FINISHED, error=None, return_value=value, skipped=True)
        log.info("skipped  %s  (finished in an earlier launch; returned %s)", job.name, value)
        return True

    def save(self) -> None:
        jobs = self.data["jobs"].values()
        counts: dict[str, int] = {}
        for job in jobs:
            counts[job.get("status", "?")] = counts.get(job.get("status", "?"), 0) + 1
        self.data["counts"] = counts
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json(self.path, self.data)


class SweepJobFailed(CompactHydraException):
    """A job of the sweep did not finish (the others ran on), or the sweep cannot start; Hydra
    prints this one line, no traceback."""


class FailedJobReturn(JobReturn):
    """A failed job's return: raises SweepJobFailed when read, without the "Error executing job
    with overrides" line Hydra's JobReturn writes first (SweepJobFailed already names the job)."""

    @property
    def return_value(self) -> Any:
        raise self._return_value

    @return_value.setter
    def return_value(self, value: Any) -> None:
        self._return_value = value


def job_return(
    name: str, result: dict, failed: list[str], total: int, summary: Path, **fields: Any
) -> JobReturn:
    """What a launcher hands Hydra for one job: its return value, or, for a job that did not
    finish, a SweepJobFailed naming every such job and where each job's status is."""
    if result.get("ok"):
        ret = JobReturn(**fields)
        ret.status = JobStatus.COMPLETED
        ret.return_value = result.get("return_value")
        return ret
    ret = FailedJobReturn(**fields)
    ret.status = JobStatus.FAILED
    ret.return_value = SweepJobFailed(
        f"{len(failed)} of {total} sweep jobs did not finish ({', '.join(failed)}); {name} "
        f"{result.get('status', 'failed')}: {result.get('error')}. The other jobs ran on; every "
        f"job's status is in {summary}"
    )
    return ret
