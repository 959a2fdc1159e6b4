"""ParallelLauncher: run a sweep's jobs side by side, each slot with its own worker process.

A slot is a GPU (or a group of GPUs for multi-GPU jobs), or a share of the CPU cores when there is
no GPU. Each slot's worker (worker.py) sees only its GPUs (CUDA_VISIBLE_DEVICES, set before it
starts), runs pinned to its cores, imports torch and Lightning once and runs job after job; the
next job starts as soon as a slot frees. With hydra.launcher.fuse=auto, jobs that differ only in
what src.fused lets a member hold for itself (seed, optimizer and scheduler settings, label
smoothing) train together as one fused model in one process (fusion.py). A DDP job runs in a fresh
process of its own (child.py). A failed or killed job is recorded and the others run on; Ctrl-C
stops every job. Jobs whose metrics.json already says "finished" (a relaunch of the same sweep on
the same folder) are not run again; unfinished ones that left a checkpoint continue from it.
"""

# No `from __future__ import annotations`: Hydra loads plugin modules outside sys.modules,
# where dataclasses cannot resolve string annotations.
import copy
import logging
import signal
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from src.fused import fusion_key, why_alone

from . import fusion, naming
from .pool import FreshProcess, Runner, Worker
from .slots import Slot, plan_slots, resolve_devices, usable_cores
from .summary import (
    FINISHED,
    RUNNING,
    Summary,
    SweepJobFailed,
    left_unfinished,
    mark_dead,
    read_metrics,
)

log = logging.getLogger(__name__)
# The line that opens a sweep, before its folder (the GPU check reads it).
LAUNCHING = "launching %d jobs (%d processes), %d at a time"

POLL_S = 0.2


@dataclass
class Job:
    num: int
    overrides: list[str]
    name: str
    dir: Path
    params: dict[str, str]
    config: DictConfig | None = None
    slot: Slot | None = None
    started: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False


@dataclass
class Unit:
    """What runs at once in one process on one slot: a job, or a fused group of jobs."""

    jobs: list[Job]
    runner: Runner | None = None

    @property
    def names(self) -> str:
        return ", ".join(job.name for job in self.jobs)


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
        fuse: str = "auto",
        max_fused: int | None = None,
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
        self.fuse = str(fuse)
        self.max_fused = max_fused
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.summary: Summary | None = None
        self.sweep_dir = Path()
        self.workers: dict[int, Worker] = {}

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

    # -- grouping -------------------------------------------------------------------------------

    def _slots(self, gpus: Sequence[str], n_units: int) -> list[Slot]:
        try:
            return plan_slots(
                gpus,
                self.jobs_per_device,
                self.devices_per_job,
                self.cpu_jobs,
                n_units,
                usable_cores(),
            )
        except ValueError as err:  # settings that leave no slot to run on
            raise SweepJobFailed(f"cannot start the sweep: {err}") from None

    def _check_fuse(self) -> None:
        if self.fuse not in fusion.FUSE_CHOICES:
            raise SweepJobFailed(
                f"cannot start the sweep: hydra.launcher.fuse={self.fuse} is not one of "
                f"{', '.join(fusion.FUSE_CHOICES)}"
            )

    def _units(self, todo: list[Job], gpus: bool, slots: int = 1) -> list[Unit]:
        """What runs in one process: each job alone, or (hydra.launcher.fuse=auto) the jobs that
        src.fused can train as one model together, one line per group saying which and why."""
        if self.fuse == "off" or len(todo) < 2:
            return [Unit([job]) for job in todo]
        max_fused = self.max_fused or fusion.MAX_FUSED["gpu" if gpus else "cpu"]
        keys, flats, reasons = [], [], []
        for job in todo:
            job.config = self._compose(job)
            fusable = not self._own_process(job.config)
            task = self._fusion_view(job.config) if fusable else None
            keys.append(fusion_key(task) if fusable else None)
            flats.append(fusion.flat(task) if fusable else None)
            reasons.append(why_alone(task) if fusable else None)
        try:
            groups = fusion.spread(fusion.plan(keys, int(max_fused)), slots)
        except ValueError as err:
            raise SweepJobFailed(f"cannot start the sweep: {err}") from None
        names = [j.name for j in todo]
        for line in fusion.describe(groups, names, flats, int(max_fused), why_alone=reasons):
            log.info("%s", line)
        return [Unit([todo[i] for i in group]) for group in groups]

    def _fusion_view(self, config: DictConfig) -> DictConfig:
        """The job's task config as fusion_key sees it: whether a member resumes from its own
        checkpoint (train_group does that per member) does not keep it apart."""
        task = copy.deepcopy(config)
        with open_dict(task):
            del task["hydra"]
            if self.resume_key and self.resume_key in task:
                task[self.resume_key] = False
        return task

    def _own_process(self, config: DictConfig) -> bool:
        """A DDP job runs in a fresh process (child.py): Lightning starts its extra ranks by
        re-running its command line, which in a worker would be the worker's."""
        trainer = config.get("trainer") or {}
        devices = trainer.get("devices")
        if isinstance(devices, str):  # "2", or "auto" (the slot's GPUs: devices_per_job)
            devices = int(devices) if devices.isdigit() else 1
        many = devices > 1 if isinstance(devices, int) else len(devices or ()) > 1
        return many or int(trainer.get("num_nodes") or 1) > 1 or self.devices_per_job > 1

    # -- one job or group -----------------------------------------------------------------------

    def _start(self, unit: Unit, slot: Slot) -> bool:
        """Start the unit on `slot`; False (and its jobs failed) if it cannot start."""
        try:
            self._spawn(unit, slot)
        except Exception as err:
            error = f"{type(err).__name__}: {err}"
            for job in unit.jobs:
                job.result = {"ok": False, "status": "failed", "error": error}
                self._record(job, status="failed", error=error, return_value=None)
            log.error("failed   %s: cannot start: %s", unit.names, error)
            return False
        assert unit.runner is not None
        for job in unit.jobs:
            self._record(
                job,
                status="running",
                error=None,
                return_value=None,
                pid=unit.runner.pid,
                started=job.started,
                ended=None,
            )
        log.info("started  %s  (%s, pid %d)", unit.names, slot.label, unit.runner.pid)
        return True

    def _spawn(self, unit: Unit, slot: Slot) -> None:
        for job in unit.jobs:
            if job.config is None:
                job.config = self._compose(job)
            job.dir.mkdir(parents=True, exist_ok=True)
        work = {
            "task_function": self.task_function,
            "hydra_context": self.hydra_context,
            "configs": [job.config for job in unit.jobs],
            "singletons": Singleton.get_state(),
        }
        first = unit.jobs[0]
        if len(unit.jobs) == 1 and self._own_process(first.config):
            spool = self.sweep_dir / ".launcher"
            unit.runner = FreshProcess(slot, work, spool, first.name, first.dir / "console.log")
        else:
            worker = self._worker(slot)
            worker.run({**work, "consoles": [str(job.dir / "console.log") for job in unit.jobs]})
            unit.runner = worker
        for job in unit.jobs:
            job.slot, job.started = slot, time.time()

    def _worker(self, slot: Slot) -> Worker:
        """The slot's worker; a new one when it has none, or its last one retired or died."""
        worker = self.workers.get(slot.index)
        if worker is None or not worker.alive:
            if worker is not None:
                worker.end(self.stop_timeout_s)
            worker = self.workers[slot.index] = Worker(slot, self._preload())
        return worker

    def _preload(self) -> list[str]:
        """What a worker imports before its first job: the task's module."""
        assert self.task_function is not None
        name = self.task_function.__module__
        if name == "__main__":  # `python -m src.train`: the module it runs as __main__
            spec = getattr(sys.modules["__main__"], "__spec__", None)
            name = spec.name if spec else None
        return [name] if name else []

    def _close_workers(self) -> None:
        for worker in self.workers.values():  # all at once: their exits overlap
            worker.close()
        for worker in self.workers.values():
            worker.end(self.stop_timeout_s)
        self.workers.clear()

    def _collect(self, unit: Unit) -> None:
        """Read what an ended unit left: each job's result, its metrics.json, its exit status."""
        assert unit.runner is not None
        code, result = unit.runner.outcome()
        members = result["members"] if result else [{} for _ in unit.jobs]
        for job, outcome in zip(unit.jobs, members, strict=True):
            self._collect_job(job, outcome, code, result or {}, unit.runner.pid)

    def _collect_job(
        self, job: Job, outcome: dict[str, Any], code: int, result: dict[str, Any], pid: int
    ) -> None:
        if job.interrupted:
            reason = "stopped by the launcher (Ctrl-C or SIGTERM)"
        elif code < 0:
            signame = signal.Signals(-code).name
            reason = f"killed by {signame}" + (" (out of memory?)" if signame == "SIGKILL" else "")
        elif not outcome:
            reason = f"exited with status {code} before reporting a result"
        else:
            reason = None
        if not outcome and read_metrics(job.dir).get("status") == FINISHED:
            # A fused group's member that finished before its process died.
            value = read_metrics(job.dir).get(self.metric) if self.metric else None
            outcome, reason = {"ok": True, "code": 0, "return_value": value}, None
        if reason:
            mark_dead(job.dir, reason)  # only a metrics.json still saying "running" changes
        metrics = read_metrics(job.dir)
        recorded = metrics.get("status", FINISHED)
        exit_code = outcome.get("code", code)
        # A task can return normally from a run that did not finish (e.g. "diverged").
        ok = bool(outcome.get("ok")) and exit_code == 0 and recorded == FINISHED
        if ok:
            status, error = FINISHED, None
        elif job.interrupted:
            status, error = "interrupted", reason
        else:
            status = recorded if recorded not in (FINISHED, RUNNING) else "failed"
            error = reason or outcome.get("error") or metrics.get("error")
        self._record(
            job,
            status=status,
            error=error,
            return_value=outcome.get("return_value") if ok else None,
            exit_code=exit_code,
            pid=result.get("pid", pid),
            # What the job process itself saw, to check against `device`.
            visible_devices=result.get("device"),
            ended=time.time(),
            wall_time_s=round(time.time() - job.started, 2),
        )
        job.result = {**outcome, "ok": ok, "status": status, "error": error}
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
        self.summary.record(
            job,
            device=",".join(slot.devices) if slot and slot.devices else None,
            cores=list(slot.cores) if slot else None,
            **fields,
        )

    def _job_return(self, job: Job, failed: list[Job], total: int) -> JobReturn:
        assert self.summary is not None
        config = job.config
        return self.summary.job_return(
            job,
            failed,
            total,
            cfg=config,
            task_name=config.hydra.job.name if config is not None else None,
            hydra_cfg=config.hydra if config is not None else None,
        )

    def _finished_before(self, job: Job) -> bool:
        assert self.summary is not None
        return self.skip_finished and self.summary.reuse_finished(job, self.metric)

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

        self._check_fuse()
        gpus = resolve_devices(self.devices, self.accelerator)
        # As many slots as there are jobs or cores (GPUs); fusing leaves at least one unit per
        # slot (fusion.spread), so the slots do not depend on how the jobs are grouped.
        slots = self._slots(gpus, len(todo))
        units: list[Unit] = []
        # A scheduler's SIGTERM to the launcher stops the jobs the same way Ctrl-C does.
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            if todo and self.devices_per_job == 1:
                # First, all at once: their imports of torch and Lightning overlap each other and
                # the composing of every job's config for grouping.
                for slot in slots:
                    self._worker(slot)
            units = self._units(list(todo), bool(gpus), len(slots))
            if units:
                log.info(LAUNCHING + ", into %s", len(todo), len(units), len(slots), sweep_dir)
            waiting: deque[Unit] = deque(units)
            free, running = list(reversed(slots)), []
            while waiting or running:
                while waiting and free:
                    unit, slot = waiting.popleft(), free.pop()
                    if self._start(unit, slot):
                        running.append(unit)
                    else:
                        free.append(slot)
                answers = [u.runner.outbox for u in running if isinstance(u.runner, Worker)]
                if answers and len(answers) == len(running):
                    wait(answers, timeout=POLL_S)
                else:  # a fresh process says nothing until it ends
                    time.sleep(POLL_S)
                for unit in [u for u in running if u.runner.done()]:
                    running.remove(unit)
                    self._collect(unit)
                    free.append(unit.jobs[0].slot)
        except KeyboardInterrupt as err:
            # Every started unit not yet collected: one may be between its start and `running`.
            running = [
                u for u in units if u.runner is not None and "status" not in u.jobs[0].result
            ]
            log.warning("%s: stopping %d running processes", err or "Ctrl-C", len(running))
            self._stop(running)
            log.warning(
                "sweep stopped; finished jobs are kept. To run the rest: the same command with "
                "hydra.sweep.dir=%s",
                sweep_dir,
            )
            raise SystemExit(130) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
            self._close_workers()
        spool = sweep_dir / ".launcher"
        if spool.is_dir() and not any(spool.iterdir()):
            spool.rmdir()
        failed = self.summary.report_end(jobs)
        return [self._job_return(job, failed, len(jobs)) for job in jobs]

    def _stop(self, running: list[Unit]) -> None:
        """SIGTERM every unit's process group (its process and a job's DDP ranks), SIGKILL what
        has not ended (or answered) after stop_timeout_s."""
        for unit in running:
            for job in unit.jobs:
                job.interrupted = True
            unit.runner.signal(signal.SIGTERM)
        deadline = time.time() + self.stop_timeout_s
        while time.time() < deadline and not all(u.runner.done() for u in running):
            time.sleep(POLL_S)
        for unit in running:
            if not unit.runner.done():
                unit.runner.signal(signal.SIGKILL)
                unit.runner.process.wait()
            self._collect(unit)


def _sets_subdir(overrides: Sequence[str]) -> bool:
    return any(o.split("=", 1)[0].lstrip("+~") == "hydra.sweep.subdir" for o in overrides)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")
