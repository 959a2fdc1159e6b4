"""A long-lived sweep worker: `python worker.py <in fd> <out fd>`, one per slot of a sweep.

A fresh process per job imports torch and Lightning again (5-8 s); a worker imports them once and
then runs job after job (or fused group after group) that the launcher sends it over a pipe, one
at a time, answering each with its result. Its GPUs (CUDA_VISIBLE_DEVICES, set by the launcher
before it started) and cores are its slot's for its whole life; each job sets its own thread
count from them, writes its console output to its own folder, and gets Hydra's state afresh.
A worker whose job failed exits after answering, so a fault (a poisoned CUDA context, state a
crash left behind) never reaches the next job: the launcher starts a new worker for the slot.
Run by path like child.py; it takes the launcher's sys.path from its first message.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import pickle
import sys
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path


@contextlib.contextmanager
def console(paths: list[str]) -> Iterator[None]:
    """Send this process's stdout and stderr (the file descriptors, so native code's output too)
    to the end of every file in `paths`: a job's console.log, or each member's of a group."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    files = [open(p, "ab") for p in paths]  # noqa: SIM115 (closed below)
    pump = None
    if len(files) == 1:
        target = files[0].fileno()
    else:  # one stream, copied into every member's file
        read, target = os.pipe()

        def copy_out() -> None:
            while chunk := os.read(read, 65536):
                for file in files:
                    file.write(chunk)
                    file.flush()
            os.close(read)

        pump = threading.Thread(target=copy_out, daemon=True)
        pump.start()
    os.dup2(target, 1)
    os.dup2(target, 2)
    if pump is not None:
        os.close(target)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)  # closes the pipe's last write ends: the pump reads to its end
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        if pump is not None:
            pump.join()
        for file in files:
            file.close()


def enter_job(config):
    """Set up a fused group's member as Hydra's run_job sets up a job: its output folder, its
    runtime output_dir, its .hydra/ files; returns (the task's config, the folder)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict, read_write

    out = Path(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir)).absolute()
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = str(out)
    HydraConfig.instance().set_config(config)
    out.mkdir(parents=True, exist_ok=True)
    task_cfg = copy.deepcopy(config)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    if config.hydra.output_subdir is not None:
        hydra_output = out / str(config.hydra.output_subdir)
        hydra_output.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(task_cfg, hydra_output / "config.yaml")
        OmegaConf.save(HydraConfig.instance().cfg, hydra_output / "hydra.yaml")
        OmegaConf.save(config.hydra.overrides.task, hydra_output / "overrides.yaml")
    return task_cfg, out


def run_group(hydra_context, configs) -> list[dict]:
    """Train a fused group with src.fused.train_group: each member's {ok, return_value or error,
    code}. The first member runs as Hydra runs a job (logging, callbacks); the others' folders
    are set up the same way; Hydra's job context stays the first member's."""
    from hydra.core.hydra_config import HydraConfig

    from hydra_plugins.cifar10_lab_launcher.child import run_task
    from src.fused import train_group

    metrics: list[dict] = []

    def task(first_cfg):
        first_dir = Path(HydraConfig.get().runtime.output_dir)
        members = [enter_job(config) for config in configs[1:]]
        HydraConfig.instance().set_config(configs[0])
        cfgs = [first_cfg, *(cfg for cfg, _ in members)]
        metrics.extend(train_group(cfgs, [first_dir, *(out for _, out in members)]))

    outcome, code = run_task(hydra_context, task, configs[0])
    if code:  # a fault of the whole group: train_group recorded it in every unfinished member
        return [{**outcome, "code": code} for _ in configs]
    return [
        # What src.train's task function returns to the sweeper.
        {"ok": True, "code": 0, "return_value": m.get(c.get("optimized_metric", "val/acc_best"))}
        for m, c in zip(metrics, configs, strict=True)
    ]


def serve(inbox: Connection, outbox: Connection) -> int:
    from hydra.core.singleton import Singleton
    from hydra.core.utils import setup_globals

    from hydra_plugins.cifar10_lab_launcher.child import run_task

    while True:
        try:
            work = pickle.loads(inbox.recv_bytes())  # cloudpickled by the launcher
        except EOFError:  # the launcher is done with this worker
            return 0
        with console(work["consoles"]):
            setup_globals()
            Singleton.set_state(work["singletons"])
            if len(work["configs"]) == 1:
                outcome, code = run_task(
                    work["hydra_context"], work["task_function"], work["configs"][0]
                )
                members = [{**outcome, "code": code}]
            else:
                members = run_group(work["hydra_context"], work["configs"])
        retire = any(m["code"] for m in members)
        result = {
            "pid": os.getpid(),
            "device": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "members": members,
            "retire": retire,
        }
        try:
            message = pickle.dumps(result)
        except Exception as err:  # an unpicklable return value must not lose the status
            for m in members:
                m["return_value"] = repr(m.get("return_value"))
            sys.stderr.write(f"cannot pickle a job's return value ({err}); kept its repr\n")
            message = pickle.dumps(result)
        outbox.send_bytes(message)
        if retire:
            return 0


def main(in_fd: int, out_fd: int) -> int:
    inbox, outbox = Connection(in_fd, writable=False), Connection(out_fd, readable=False)
    header = pickle.loads(inbox.recv_bytes())  # plain data: needs no import
    sys.path[:] = header["sys_path"]
    if header["cores"] and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, header["cores"])
    from hydra_plugins.cifar10_lab_launcher.child import die_with_parent

    die_with_parent()
    for module in header["preload"]:  # the task's module, before the first job
        importlib.import_module(module)
    return serve(inbox, outbox)


if __name__ == "__main__":
    code = main(int(sys.argv[1]), int(sys.argv[2]))
    # Every job has recorded its end; skip tearing down torch's modules (seconds, at every
    # sweep's end).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
