"""SlurmLauncher: a sweep's jobs as one SLURM job array, through submitit.

hydra-submitit-launcher's own SlurmLauncher submits and waits, but asks for resources the cluster
may not have (sbatch then refuses with a traceback), names job folders by number, raises the first
failed job's error and drops the others' results, and polls job states with sacct, which needs
SLURM's accounting (slurmdbd): without it submitit warns every few seconds and never notices a job
that ended without writing its result (cancelled, killed, out of memory), waiting for it forever.
This one keeps the parallel launcher's habits on a cluster:

- requests sized to the partition's nodes (`auto`: a CPU partition gets no GPU request; a request
  no node can meet is one line naming the setting to change, as is a request sbatch refuses);
- job folders named by the swept values, summary.json, finished jobs skipped on a relaunch and
  unfinished ones resumed from their last.ckpt;
- job states from squeue (no accounting needed); a failed job is recorded and the others run on;
- on the node, SLURM's warning before the time limit (submitit's USR2) stops training as SIGTERM
  does: the job saves its last.ckpt and the relaunch continues it.
"""

# No `from __future__ import annotations`: Hydra loads plugin modules outside sys.modules.
import contextlib
import io
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import configure_log, setup_globals
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as SubmititSlurmLauncher,
)
from omegaconf import OmegaConf, open_dict

from src.errors import ConfigError

from . import naming
from .child import run_task
from .summary import (
    FINISHED,
    RUNNING,
    Summary,
    left_unfinished,
    mark_dead,
    read_metrics,
)

log = logging.getLogger(__name__)

# SLURM states of a job that has not ended (squeue's long names).
LIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}
# What sbatch's refusals are about, and the setting that changes it.
SBATCH_SETTINGS = [
    ("generic resource", "gpus_per_node (or gres)"),
    ("partition", "partition"),
    ("account", "account"),
    ("qos", "qos"),
    ("time limit", "timeout_min"),
    ("memory", "mem_gb"),
    ("node configuration", "cpus_per_task, mem_gb or gpus_per_node"),
]


class JobFailed(Exception):
    """Raised on the node so that SLURM records the job as failed; carries its one-line error."""


@dataclass
class Nodes:
    """What one node of the partition offers (the smallest, where nodes differ)."""

    partition: str
    cpus: int
    mem_mb: int
    gpus: int


@dataclass
class Job:
    num: int
    overrides: list
    name: str
    dir: Path
    params: dict
    resume: bool = False
    slurm: Any = None  # submitit's job
    state: str = "PENDING"
    result: dict | None = None


class SlurmLauncher(SubmititSlurmLauncher):
    def __init__(
        self,
        skip_finished: bool = True,
        resume_key: str | None = "resume",
        metric: str | None = None,
        poll_s: float = 2.0,
        **params: Any,
    ) -> None:
        super().__init__(**params)
        self.skip_finished, self.resume_key, self.metric = skip_finished, resume_key, metric
        self.poll_s = poll_s
        self.summary: Summary | None = None

    # -- on the node ----------------------------------------------------------------------------

    def __call__(  # type: ignore[override]
        self,
        overrides: list,
        sweep_dir: str,
        name: str,
        resume: bool,
        num: int,
        singleton_state: dict,
    ) -> dict:
        import submitit

        # submitit ignores SIGTERM and turns its time-limit signal into a requeue that this
        # project does not use; Lightning's SIGTERM handling saves last.ckpt and stops instead.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGUSR2, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
        Singleton.set_state(singleton_state)
        setup_globals()
        assert self.hydra_context is not None and self.config is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = submitit.JobEnvironment().job_id
            config.hydra.job.num = num
            config.hydra.sweep.dir = sweep_dir  # resolved at launch: ${now:} differs here
            config.hydra.sweep.subdir = name
            if resume:
                config[self.resume_key] = True
        result, code = run_task(self.hydra_context, self.task_function, config)
        if code:
            raise JobFailed(result["error"])
        return result

    # -- at the launch --------------------------------------------------------------------------

    def launch(self, job_overrides: Any, initial_job_idx: int) -> list:
        setup_globals()
        assert self.config is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        command_line = list(self.config.hydra.overrides.task)
        keys = naming.swept_keys(command_line, job_overrides[0])
        if self.summary is None:
            self.summary = Summary(sweep_dir, keys)
        jobs, taken = [], set()
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            params = naming.values(list(overrides), keys)
            name = naming.job_name(params, fallback=f"job{num}")
            name = f"{name}#{num}" if name in taken else name
            taken.add(name)
            jobs.append(Job(num, list(overrides), name, sweep_dir / name, params))

        todo = [job for job in jobs if not self._finished_before(job)]
        if todo:
            try:
                executor = self.executor()
            except ConfigError:
                clean_refused(sweep_dir)
                raise
            can_resume = self.resume_key in self.config and not self.config.get("ckpt_path")
            for job in todo:
                job.resume = bool(self.resume_key and can_resume and left_unfinished(job.dir))
            try:  # submitit prints sbatch's refusal before raising it: said once, below
                with contextlib.redirect_stderr(io.StringIO()):
                    submitted = executor.map_array(
                        self,
                        [job.overrides for job in todo],
                        [str(sweep_dir)] * len(todo),
                        [job.name for job in todo],
                        [job.resume for job in todo],
                        [job.num for job in todo],
                        [Singleton.get_state()] * len(todo),
                    )
            except Exception as err:  # submitit raises sbatch's refusal with its whole output
                clean_refused(sweep_dir)
                raise refusal(err) from None
            for job, slurm_job in zip(todo, submitted, strict=True):
                job.slurm = slurm_job
                self._record(job, status="pending", slurm_job_id=slurm_job.job_id, error=None)
            first = todo[0].slurm.job_id.split("_")[0]
            log.info("submitted %d jobs as SLURM job array %s into %s", len(todo), first, sweep_dir)
            for job in todo:
                if job.resume:
                    log.info("resuming %s from its last checkpoint", job.name)
            try:
                self._wait(todo)
            except KeyboardInterrupt:
                subprocess.run(["scancel", *(j.slurm.job_id for j in todo)], check=False)
                log.warning(
                    "Ctrl-C: cancelled the sweep's SLURM jobs (running ones save last.ckpt). To "
                    "run the rest: the same command with hydra.sweep.dir=%s",
                    sweep_dir,
                )
                raise SystemExit(130) from None
        failed = self.summary.report_end(jobs)
        return [self.summary.job_return(job, failed, len(jobs)) for job in jobs]

    def executor(self) -> Any:
        """submitit's executor, its requests sized to the partition (see `fit_to`)."""
        import submitit

        params = fit_to(dict(self.params), partition_nodes(self.params.get("partition")))
        if str(OmegaConf.select(self.config, "trainer.accelerator")) == "cpu":
            params["gpus_per_node"] = None  # a CPU run on a GPU partition leaves the GPUs free
        executor = submitit.AutoExecutor(
            folder=params.pop("submitit_folder"),
            cluster="slurm",
            slurm_max_num_timeout=params.pop("max_num_timeout"),
        )
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{k if k in base else f"slurm_{k}": v for k, v in params.items()}
        )
        return executor

    def _wait(self, jobs: list) -> None:
        """Poll squeue until every job has ended; record each one as it starts and ends."""
        waiting = list(jobs)
        while waiting:
            time.sleep(self.poll_s)
            states = squeue_states()
            for job in list(waiting):
                # A job squeue no longer lists has ended (SLURM forgets ended jobs after
                # MinJobAge, 5 minutes by default); None: squeue did not answer, ask again.
                state = states.get(job.slurm.job_id, "ENDED") if states is not None else job.state
                if state == "RUNNING" and job.state != "RUNNING":
                    self._record(job, status="running", started=time.time())
                    log.info("started  %s  (SLURM job %s)", job.name, job.slurm.job_id)
                job.state = state
                if state not in LIVE:
                    waiting.remove(job)
                    self._collect(job)

    def _collect(self, job: Job) -> None:
        """What an ended job left: submitit's result of its first task and its metrics.json."""
        task = job.slurm._sub_jobs[0] if job.slurm._sub_jobs else job.slurm
        outcome, value = "", None
        if task.paths.result_pickle.exists():
            from submitit.core.utils import pickle_load

            outcome, value = pickle_load(task.paths.result_pickle)
        if not outcome:  # ended without a word: cancelled, killed, out of memory, node failure
            mark_dead(job.dir, f"SLURM job {job.slurm.job_id} ended ({job.state}) without a result")
        metrics = read_metrics(job.dir)
        recorded = metrics.get("status", FINISHED)
        ok = outcome == "success" and value.get("ok") and recorded == FINISHED
        if ok:
            status, error = FINISHED, None
        else:
            status = recorded if recorded not in (FINISHED, RUNNING) else "failed"
            # The job's own line (JobFailed, raised on the node), as the parallel launcher reports.
            error = (
                re.sub(r"^[\w.]*JobFailed: ", "", value.strip().splitlines()[-1])
                if outcome == "error"
                else metrics.get("error")
                or f"SLURM job {job.slurm.job_id} ended ({job.state}) without a result"
            )
        job.result = {"ok": ok, "status": status, "error": error}
        job.result["return_value"] = value.get("return_value") if ok else None
        self._record(
            job,
            status=status,
            error=error,
            return_value=job.result["return_value"],
            ended=time.time(),
        )
        log.info(
            "%-8s %s%s",
            status,
            job.name,
            f": {error}" if error else f", returned {job.result['return_value']}",
        )

    def _finished_before(self, job: Job) -> bool:
        assert self.summary is not None
        return self.skip_finished and self.summary.reuse_finished(job, self.metric)

    def _record(self, job: Job, **fields: Any) -> None:
        assert self.summary is not None
        self.summary.record(job, **fields)


def partition_nodes(partition: str | None) -> Nodes:
    """The partition's nodes as sinfo reports them (the default partition for None)."""
    if shutil.which("sinfo") is None:
        raise ConfigError(
            "hydra/launcher=slurm needs SLURM's commands (sinfo, sbatch, squeue), and sinfo is "
            "not on PATH: launch from a machine of the cluster"
        )
    done = subprocess.run(
        ["sinfo", "--noheader", "--format=%P|%c|%m|%G"], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise ConfigError(f"sinfo failed ({done.stderr.strip()}): is the SLURM cluster up?")
    rows = [line.split("|") for line in done.stdout.split()]
    mine = [r for r in rows if r[0].rstrip("*") == partition or (not partition and "*" in r[0])]
    if not mine:
        names = sorted({r[0].rstrip("*") for r in rows})
        what = f"no partition '{partition}'" if partition else "no default partition"
        raise ConfigError(
            f"the SLURM cluster has {what}: set hydra.launcher.partition to one of "
            f"{', '.join(names)}"
        )
    gpus = [sum(int(n) for n in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", r[3])) for r in mine]
    return Nodes(
        mine[0][0].rstrip("*"),
        min(int(r[1].rstrip("+")) for r in mine),
        min(int(r[2].rstrip("+")) for r in mine),
        min(gpus),
    )


def fit_to(params: dict, nodes: Nodes) -> dict:
    """Resolve `auto` requests from the partition's nodes; refuse requests no node can meet.

    gpus_per_node auto: one GPU per task where the nodes have GPUs, none where they have none.
    cpus_per_task auto: up to 8 per task, as far as the node's cores go; mem_gb auto: the share
    of the node's memory that goes with those cores.
    """
    tasks = int(params["tasks_per_node"])
    if params["gpus_per_node"] == "auto":
        params["gpus_per_node"] = tasks if nodes.gpus else None
    if params["cpus_per_task"] == "auto":
        params["cpus_per_task"] = max(1, min(8, nodes.cpus // tasks))
    if params["mem_gb"] == "auto":
        share = nodes.mem_mb * (params["cpus_per_task"] or 1) * tasks / nodes.cpus
        params["mem_gb"] = max(1, int(share / 1024))
    where = f"the nodes of partition {nodes.partition} have"
    if not params["gpus_per_node"]:
        params["gpus_per_node"] = None  # no --gpus-per-node=0: some clusters refuse any gres
    elif params["gpus_per_node"] > nodes.gpus:
        raise ConfigError(
            f"hydra.launcher.gpus_per_node={params['gpus_per_node']}, but {where} "
            f"{nodes.gpus or 'no'} GPUs: set hydra.launcher.gpus_per_node=auto (or 0), or choose "
            "a GPU partition with hydra.launcher.partition"
        )
    if (params["cpus_per_task"] or 1) * tasks > nodes.cpus:
        raise ConfigError(
            f"hydra.launcher.cpus_per_task={params['cpus_per_task']} for {tasks} task(s) per node, "
            f"but {where} {nodes.cpus} CPUs: lower hydra.launcher.cpus_per_task (or set it auto)"
        )
    if (params["mem_gb"] or 0) * 1024 > nodes.mem_mb:
        raise ConfigError(
            f"hydra.launcher.mem_gb={params['mem_gb']}, but {where} {nodes.mem_mb} MB: lower "
            "hydra.launcher.mem_gb (or set it auto)"
        )
    params.setdefault("partition", None)
    params["partition"] = params["partition"] or nodes.partition
    return params


def refusal(err: Exception) -> Exception:
    """sbatch's refusal as one line naming the setting to change (other errors as they are)."""
    lines = [ln.strip() for ln in str(err).splitlines() if "sbatch: error:" in ln]
    if not lines:
        return err
    why = lines[-1].split("sbatch: error:", 1)[1].strip()
    text = " ".join(ln.split("sbatch: error:", 1)[1].strip() for ln in lines).lower()
    setting = next((s for phrase, s in SBATCH_SETTINGS if phrase in text), None)
    fix = f"change hydra.launcher.{setting}" if setting else "change the hydra.launcher settings"
    return ConfigError(f"sbatch refused the sweep's jobs ({why}): {fix}")


def clean_refused(sweep_dir: Path) -> None:
    """Remove what a refused submission left: submitit's script and pickles of jobs never
    submitted (submitted ones live in job-id folders), and the sweep folder itself when it holds
    nothing else than Hydra's multirun.yaml."""
    spool = sweep_dir / ".submitit"
    if spool.is_dir():
        for path in spool.iterdir():
            if path.is_file():
                path.unlink()
        if not any(spool.iterdir()):
            spool.rmdir()
    if {p.name for p in sweep_dir.iterdir()} == {"multirun.yaml"}:
        shutil.rmtree(sweep_dir)


def squeue_states() -> dict | None:
    """{job id: state} of every job SLURM still knows (array tasks one by one); None if squeue
    does not answer (a busy controller: the next poll asks again)."""
    done = subprocess.run(
        ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        log.debug("squeue failed: %s", done.stderr.strip())
        return None
    return dict(line.split("|", 1) for line in done.stdout.split())
