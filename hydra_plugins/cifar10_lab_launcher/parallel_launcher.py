"""ParallelLauncher: run a sweep's jobs side by side, each in a fresh process on its own slot.

A slot is a GPU (or a group of GPUs for multi-GPU jobs), or a share of the CPU cores when there is
no GPU. Each job process sees only its GPUs (CUDA_VISIBLE_DEVICES, set before it starts) and runs
pinned to its cores; the next job starts as soon as a slot frees. A failed or killed job is
recorded and the others run on; Ctrl-C stops every job. Jobs whose metrics.json already says
"finished" (a relaunch of the same sweep on the same folder) are not run again; unfinished ones
that left a checkpoint continue from it.
"""

# No `from __future__ import annotations`: Hydra loads plugin modules outside sys.modules,
# where dataclasses cannot resolve string annotations.
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.errors import CompactHydraException
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from . import naming
from .slots import Slot, plan_slots, resolve_devices, usable_cores
from .summary import FINISHED, RUNNING, Summary, left_unfinished, mark_dead, read_metrics

log = logging.getLogger(__name__)

CHILD = Path(__file__).with_name("child.py")
POLL_S = 0.2


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


@dataclass
class Job:
    num: int
    overrides: list[str]
    name: str
    dir: Path
    params: dict[str, str]
    config: DictConfig | None = None
    slot: Slot | None = None
    process: subprocess.Popen | None = None
    result_file: Path | None = None
    started: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False


class ParallelLauncher(Launcher):
    def __init__(
        self,
        devices: Any = "auto",
        jobs_per_device: int = 1,
        devices_per_job: Any = 1,
        cpu_jobs: int | None = None,
        skip_finished: bool = True,
        metric: str | None = None,
        stop_timeout_s: float = 30.0,
        resume_key: str | None = None,
        accelerator: str = "auto",
    ) -> None:
        super().__init__()
        self.devices = devices if isinstance(devices, (str, int, type(None))) else list(devices)
        self.jobs_per_device = int(jobs_per_device)
        # trainer.devices may be "auto" or a list; only a positive int asks for a GPU group.
        self.devices_per_job = devices_per_job if isinstance(devices_per_job, int) else 1
        self.cpu_jobs = cpu_jobs
        self.skip_finished = skip_finished
        self.metric = metric
        self.stop_timeout_s = stop_timeout_s
        self.resume_key = resume_key
        self.accelerator = str(accelerator)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.summary: Summary | None = None
        self.sweep_dir = Path()

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    # -- planning -------------------------------------------------------------------------------

    def _plan(self, job_overrides: Sequence[Sequence[str]], first: int) -> list[Job]:
        assert self.config is not None
        sweep_dir = self.sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        command_line = list(self.config.hydra.overrides.task)
        # A hydra.sweep.subdir given on the command line (or by the sweeper, for each job) names
        # the folders; else the swept values.
        own_subdir = _sets_subdir(self.config.hydra.overrides.hydra)
        jobs, taken = [], set()
        for num, overrides in enumerate(job_overrides, start=first):
            overrides = list(overrides)
            keys = naming.swept_keys(command_line, overrides)
            params = naming.values(overrides, keys)
            job = Job(num, overrides, "", sweep_dir, params)
            name = naming.job_name(params, fallback=f"job{num}")
            if own_subdir or _sets_subdir(overrides):
                name = str(OmegaConf.select(self._compose(job), "hydra.sweep.subdir"))
            if name in taken:  # the same values twice in one batch: keep both runs apart
                name = f"{name}#{num}"
            taken.add(name)
            job.name, job.dir = name, sweep_dir / name
            jobs.append(job)
        return jobs

    def _compose(self, job: Job) -> DictConfig:
        """The job's config, composed when it starts (a long sweep starts at once)."""
        assert self.config is not None and self.hydra_context is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, job.overrides)
        with open_dict(config):
            config.hydra.job.id = job.num
            config.hydra.job.num = job.num
            # Resolved here: the job process would resolve ${pid:} to its own id.
            config.hydra.sweep.dir = str(self.sweep_dir)
            if not job.name:  # naming the job from its own hydra.sweep.subdir (see _plan)
                return config
            config.hydra.sweep.subdir = job.name
            if self._resumable(job, config):
                config[self.resume_key] = True
                log.info("resuming %s from its last checkpoint", job.name)
        return config

    def _resumable(self, job: Job, config: DictConfig) -> bool:
        """An earlier launch left this job unfinished with a checkpoint: continue from it."""
        return bool(
            self.resume_key
            and self.resume_key in config
            and not config.get("ckpt_path")
            and left_unfinished(job.dir)
        )

    # -- one job --------------------------------------------------------------------------------

    def _start(self, job: Job, slot: Slot) -> bool:
        """Start the job's process on `slot`; False (and the job failed) if it cannot start."""
        try:
            self._spawn(job, slot)
        except Exception as err:
            job.result = {"ok": False, "status": "failed", "error": f"{type(err).__name__}: {err}"}
            self._record(job, status="failed", error=job.result["error"], return_value=None)
            log.error("failed   %s: cannot start: %s", job.name, job.result["error"])
            return False
        self._record(
            job,
            status="running",
            error=None,
            return_value=None,
            pid=job.process.pid,
            started=job.started,
            ended=None,
        )
        log.info("started  %s  (%s, pid %d)", job.name, slot.label, job.process.pid)
        return True

    def _spawn(self, job: Job, slot: Slot) -> None:
        job.config = self._compose(job)
        job.dir.mkdir(parents=True, exist_ok=True)
        spool = job.dir.parent / ".launcher"
        spool.mkdir(exist_ok=True)
        job_file, result_file = spool / f"{job.name}.job.pkl", spool / f"{job.name}.result.pkl"
        result_file.unlink(missing_ok=True)
        import cloudpickle  # the task function is often defined in __main__: pickle it by value

        with open(job_file, "wb") as file:
            header = {"sys_path": [p or os.getcwd() for p in sys.path], "cores": slot.cores}
            pickle.dump(header, file)
            cloudpickle.dump(
                {
                    "task_function": self.task_function,
                    "hydra_context": self.hydra_context,
                    "config": job.config,
                    "singletons": Singleton.get_state(),
                },
                file,
            )
        env = dict(os.environ)
        if slot.devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(slot.devices)
        else:
            env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU slot must not reach for a GPU
        with open(job.dir / "console.log", "ab") as console:
            # Own process group: Ctrl-C reaches only the launcher, which then stops every job
            # (and the DDP ranks a job started) itself.
            job.process = subprocess.Popen(
                [sys.executable, str(CHILD), str(job_file), str(result_file)],
                stdout=console,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        job.slot, job.started, job.result_file = slot, time.time(), result_file

    def _collect(self, job: Job) -> None:
        """Read what an ended job left: its result, its metrics.json and its exit status."""
        assert job.process is not None and job.result_file is not None
        code = job.process.returncode
        try:
            with open(job.result_file, "rb") as file:
                job.result = pickle.load(file)
        except (OSError, EOFError, pickle.UnpicklingError):
            job.result = {}
        for spooled in (job.result_file, job.result_file.with_name(f"{job.name}.job.pkl")):
            spooled.unlink(missing_ok=True)
        if job.interrupted:
            reason = "stopped by the launcher (Ctrl-C or SIGTERM)"
        elif code < 0:
            signame = signal.Signals(-code).name
            reason = f"killed by {signame}" + (" (out of memory?)" if signame == "SIGKILL" else "")
        elif not job.result:
            reason = f"exited with status {code} before reporting a result"
        else:
            reason = None
        if reason:
            mark_dead(job.dir, reason)  # only a metrics.json still saying "running" changes
        metrics = read_metrics(job.dir)
        recorded = metrics.get("status", FINISHED)
        # A task can return normally from a run that did not finish (e.g. "diverged").
        ok = bool(job.result.get("ok")) and code == 0 and recorded == FINISHED
        if ok:
            status, error = FINISHED, None
        elif job.interrupted:
            status, error = "interrupted", reason
        else:
            status = recorded if recorded not in (FINISHED, RUNNING) else "failed"
            error = reason or job.result.get("error") or metrics.get("error")
        self._record(
            job,
            status=status,
            error=error,
            return_value=job.result.get("return_value") if ok else None,
            exit_code=code,
            pid=job.result.get("pid", job.process.pid),
            # What the job process itself saw, to check against `device`.
            visible_devices=job.result.get("device"),
            ended=time.time(),
            wall_time_s=round(time.time() - job.started, 2),
        )
        job.result.update(ok=ok, status=status, error=error)
        log.info(
            "%-8s %s  (%.0f s)%s",
            status,
            job.name,
            time.time() - job.started,
            f": {error}" if error else f", returned {job.result.get('return_value')}",
        )

    def _record(self, job: Job, **fields: Any) -> None:
        assert self.summary is not None
        slot = job.slot
        self.summary.update(
            job.name,
            num=job.num,
            dir=job.name,
            params=job.params,
            overrides=filter_overrides(job.overrides),
            device=",".join(slot.devices) if slot and slot.devices else None,
            cores=list(slot.cores) if slot else None,
            **fields,
        )

    def _job_return(self, job: Job, failed: list[Job], total: int) -> JobReturn:
        ret = (JobReturn if job.result.get("ok") else FailedJobReturn)(
            overrides=job.overrides,
            cfg=job.config,
            working_dir=str(job.dir),
            task_name=job.config.hydra.job.name if job.config is not None else None,
            hydra_cfg=job.config.hydra if job.config is not None else None,
        )
        if job.result.get("ok"):
            ret.status = JobStatus.COMPLETED
            ret.return_value = job.result.get("return_value")
        else:
            assert self.summary is not None
            ret.status = JobStatus.FAILED
            ret.return_value = SweepJobFailed(
                f"{len(failed)} of {total} sweep jobs did not finish "
                f"({', '.join(j.name for j in failed)}); {job.name} "
                f"{job.result.get('status', 'failed')}: {job.result.get('error')}. The other jobs "
                f"ran on; every job's status is in {self.summary.path}"
            )
        return ret

    def _finished_before(self, job: Job) -> bool:
        """A relaunch: the job's folder already holds a finished run; reuse its result."""
        metrics = read_metrics(job.dir)
        if not (self.skip_finished and metrics.get("status") == FINISHED):
            return False
        value = metrics.get(self.metric) if self.metric else None
        job.result = {"ok": True, "status": FINISHED, "return_value": value}
        self._record(job, status=FINISHED, error=None, return_value=value, skipped=True)
        log.info("skipped  %s  (finished in an earlier launch; returned %s)", job.name, value)
        return True

    # -- the sweep ------------------------------------------------------------------------------

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        jobs = self._plan(job_overrides, initial_job_idx)
        sweep_dir = self.sweep_dir
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if self.summary is None:
            keys = naming.swept_keys(self.config.hydra.overrides.task, job_overrides[0])
            self.summary = Summary(sweep_dir, keys)

        todo: deque[Job] = deque()
        for job in jobs:
            if not self._finished_before(job):
                todo.append(job)
                self._record(job, status="pending", error=None, return_value=None)

        try:
            slots = plan_slots(
                resolve_devices(self.devices, self.accelerator),
                self.jobs_per_device,
                self.devices_per_job,
                self.cpu_jobs,
                len(todo),
                usable_cores(),
            )
        except ValueError as err:  # settings that leave no slot to run on
            raise SweepJobFailed(f"cannot start the sweep: {err}") from None
        if todo:
            log.info(
                "launching %d jobs, %d at a time, into %s",
                len(todo),
                len(slots),
                sweep_dir,
            )
        free, running = list(reversed(slots)), []
        # A scheduler's SIGTERM to the launcher stops the jobs the same way Ctrl-C does.
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            while todo or running:
                while todo and free:
                    job, slot = todo.popleft(), free.pop()
                    if self._start(job, slot):
                        running.append(job)
                    else:
                        free.append(slot)
                time.sleep(POLL_S)
                for job in [j for j in running if j.process.poll() is not None]:
                    running.remove(job)
                    self._collect(job)
                    free.append(job.slot)
        except KeyboardInterrupt as err:
            # Every started job not yet collected: one may be between its start and `running`.
            running = [j for j in jobs if j.process is not None and "status" not in j.result]
            log.warning("%s: stopping %d running jobs", err or "Ctrl-C", len(running))
            self._stop(running)
            log.warning(
                "sweep stopped; finished jobs are kept. To run the rest: the same command with "
                "hydra.sweep.dir=%s",
                sweep_dir,
            )
            raise SystemExit(130) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
        failed = [job for job in jobs if not job.result.get("ok")]
        returns = [self._job_return(job, failed, len(jobs)) for job in jobs]
        spool = sweep_dir / ".launcher"
        if spool.is_dir() and not any(spool.iterdir()):
            spool.rmdir()
        log.info(
            "%d of %d jobs finished%s; summary: %s",
            len(jobs) - len(failed),
            len(jobs),
            f", {len(failed)} did not ({', '.join(j.name for j in failed)})" if failed else "",
            self.summary.path,
        )
        return returns

    def _stop(self, running: list[Job]) -> None:
        """SIGTERM every job's process group (the job and its DDP ranks), SIGKILL what stays."""
        for job in running:
            job.interrupted = True
            _signal_group(job.process, signal.SIGTERM)
        deadline = time.time() + self.stop_timeout_s
        while time.time() < deadline and any(j.process.poll() is None for j in running):
            time.sleep(POLL_S)
        for job in running:
            if job.process.poll() is None:
                _signal_group(job.process, signal.SIGKILL)
                job.process.wait()
            self._collect(job)


def _sets_subdir(overrides: Sequence[str]) -> bool:
    return any(o.split("=", 1)[0].lstrip("+~") == "hydra.sweep.subdir" for o in overrides)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
