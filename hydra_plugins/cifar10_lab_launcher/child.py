"""One sweep job in a fresh process: `python child.py <job file> <result file>` (DDP jobs;
the others run in long-lived workers, worker.py).

Run by path, not as a module, so it needs nothing on sys.path to start; it then takes the
parent's sys.path, pins itself to its cores, and only then unpickles the job (which imports torch).
The GPU choice arrives in CUDA_VISIBLE_DEVICES, set by the parent before this process started.

Lightning's DDP starts the extra ranks by re-running this same command line (with LOCAL_RANK set):
they run the same job, and only rank 0 writes the result.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import traceback
from pathlib import Path


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when the launcher dies, so no job outlives its sweep."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _write_result(path: str, result: dict) -> None:
    from src.files import atomic_write  # once the parent's sys.path is taken

    with atomic_write(Path(path), "wb") as file:
        pickle.dump(result, file)


def describe(err: BaseException) -> str:
    """`Type: message` of the error at the root of the chain (what Hydra's instantiate or a
    clean exit wrapped), on one line."""
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    return " ".join(f"{type(err).__name__}: {err}".split())


def run_task(hydra_context, task_function, config) -> tuple[dict, int]:
    """Run one sweep job in this process: ({ok, return_value or error}, exit status).

    Shared with the SLURM launcher, whose jobs run the same way on the cluster's nodes.
    """
    from hydra.core.utils import JobStatus, run_job

    try:
        ret = run_job(
            hydra_context=hydra_context,
            task_function=task_function,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        if ret.status == JobStatus.COMPLETED:
            return {"ok": True, "return_value": ret.return_value}, 0
        err = ret._return_value
        sys.stderr.write("".join(traceback.format_exception(type(err), err, err.__traceback__)))
        return {"ok": False, "error": describe(err)}, 1
    except SystemExit as err:  # the task's own clean exit (a user error, already logged)
        code = err.code if isinstance(err.code, int) else 1
        if code == 0:
            return {"ok": True, "return_value": None}, 0
        cause = err.__context__  # the exception the task was handling when it exited
        return {"ok": False, "error": describe(cause) if cause else f"exit status {code}"}, code
    except BaseException as err:  # KeyboardInterrupt too: report it, then exit
        traceback.print_exc()
        return {"ok": False, "error": describe(err)}, 1


def main(job_file: str, result_file: str) -> int:
    with open(job_file, "rb") as file:
        header = pickle.load(file)  # plain data: needs no import
        sys.path[:] = header["sys_path"]
        if header["cores"] and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, header["cores"])
        die_with_parent()
        job = pickle.load(file)  # cloudpickled task function, context and config(s)

    from hydra.core.singleton import Singleton
    from hydra.core.utils import setup_globals

    rank0 = os.environ.get("LOCAL_RANK", "0") == "0"
    result: dict = {"pid": os.getpid(), "device": os.environ.get("CUDA_VISIBLE_DEVICES")}
    setup_globals()
    Singleton.set_state(job["singletons"])
    outcome, code = run_task(job["hydra_context"], job["task_function"], job["configs"][0])
    result.update(outcome)
    if rank0:
        try:
            _write_result(result_file, result)
        except Exception as err:  # an unpicklable return value must not lose the status
            result["return_value"] = repr(result.get("return_value"))
            sys.stderr.write(f"cannot pickle the job's return value ({err}); kept its repr\n")
            _write_result(result_file, result)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
