"""The processes jobs run in, as the launcher sees them: a long-lived worker per slot (worker.py),
or a fresh process for one job (child.py, for DDP jobs, whose ranks re-run its command line).

Both are started in their own session, so Ctrl-C reaches only the launcher, which stops them
itself (and the DDP ranks a job started) through their process groups.
"""

# No `from __future__ import annotations`: Hydra loads plugin modules outside sys.modules.
import os
import pickle
import signal
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .slots import Slot

WORKER = Path(__file__).with_name("worker.py")
CHILD = Path(__file__).with_name("child.py")


def slot_env(slot: Slot) -> dict[str, str]:
    env = dict(os.environ)
    # A CPU slot must not reach for a GPU.
    env["CUDA_VISIBLE_DEVICES"] = ",".join(slot.devices) if slot.devices else ""
    return env


def header(slot: Slot) -> dict[str, Any]:
    """What a new process needs before it can unpickle anything: the launcher's sys.path."""
    return {"sys_path": [p or os.getcwd() for p in sys.path], "cores": slot.cores}


class Runner:
    """A process running one job or fused group; `outcome()` once `done()`."""

    process: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass


class Worker(Runner):
    """One slot's worker: imports once, then runs what `run` sends it, one at a time."""

    def __init__(self, slot: Slot, preload: list[str]):
        to_worker, inbox = os.pipe()
        outbox, from_worker = os.pipe()
        self.slot = slot
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), str(to_worker), str(from_worker)],
            pass_fds=(to_worker, from_worker),
            stdin=subprocess.DEVNULL,
            env=slot_env(slot),
            start_new_session=True,
        )
        os.close(to_worker)
        os.close(from_worker)
        self.inbox = Connection(inbox, readable=False)
        self.outbox = Connection(outbox, writable=False)
        self.inbox.send_bytes(pickle.dumps({**header(slot), "preload": preload}))
        self.busy = False
        self.retired = False

    @property
    def alive(self) -> bool:
        return not self.retired and self.process.poll() is None

    def run(self, work: dict[str, Any]) -> None:
        import cloudpickle  # the task function is often defined in __main__: pickle it by value

        self.inbox.send_bytes(cloudpickle.dumps(work))
        self.busy = True

    def done(self) -> bool:
        return self.outbox.poll() or self.process.poll() is not None

    def outcome(self) -> tuple[int, dict[str, Any] | None]:
        """(exit status, its result): status 0 and the result, or the status of a worker that
        died without answering (negative: the signal) and None."""
        self.busy = False
        try:
            if self.outbox.poll():
                result = pickle.loads(self.outbox.recv_bytes())
                self.retired = result["retire"]  # it exits by itself
                return 0, result
        except (EOFError, OSError, pickle.UnpicklingError):
            pass
        self.retired = True
        return self.process.wait(), None

    def close(self) -> None:
        """Let the worker end: it exits when its input closes (`end` waits for that)."""
        for conn in (self.inbox, self.outbox):
            if not conn.closed:
                conn.close()

    def end(self, timeout: float) -> None:
        """Wait for the closed worker to exit; SIGKILL it after `timeout`."""
        self.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.process.wait()


class FreshProcess(Runner):
    """One job in a process of its own (child.py), reporting through a result file."""

    def __init__(self, slot: Slot, work: dict[str, Any], spool: Path, name: str, console: Path):
        import cloudpickle

        spool.mkdir(exist_ok=True)
        self.job_file, self.result_file = spool / f"{name}.job.pkl", spool / f"{name}.result.pkl"
        self.result_file.unlink(missing_ok=True)
        with open(self.job_file, "wb") as file:
            pickle.dump(header(slot), file)
            cloudpickle.dump(work, file)
        with open(console, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(CHILD), str(self.job_file), str(self.result_file)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=slot_env(slot),
                start_new_session=True,
            )

    def done(self) -> bool:
        return self.process.poll() is not None

    def outcome(self) -> tuple[int, dict[str, Any] | None]:
        code = self.process.wait()
        try:
            with open(self.result_file, "rb") as file:
                result = pickle.load(file)
        except (OSError, EOFError, pickle.UnpicklingError):
            result = None
        for spooled in (self.result_file, self.job_file):
            spooled.unlink(missing_ok=True)
        if result is None:
            return code, None
        # As a worker answers: one member, whose exit status is the process's.
        return code, {**result, "members": [{**result, "code": code}]}
