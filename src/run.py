"""What every entry point shares: config resolvers, thread counts, error handling, run records."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from src.errors import UserError

log = logging.getLogger(__name__)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def auto_precision(accelerator: str) -> str:
    """bf16 mixed precision on a GPU, full fp32 on the CPU (where bf16 is slow)."""
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if on_gpu else "32-true"


def register_resolvers() -> None:
    """Resolvers the configs use; registered before Hydra composes anything."""
    resolvers = {
        "auto_precision": auto_precision,
        # The process id makes run folders unique even for runs started in the same second.
        "pid": os.getpid,
        "cores": available_cores,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def set_threads(threads: int | None) -> int:
    """Use `threads` CPU threads for torch (default: every core this process may run on)."""
    n = threads or available_cores()
    torch.set_num_threads(n)
    return n


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically: readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as file:
            json.dump(data, file, indent=2)
            file.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_main_process() -> bool:
    """False in the extra processes of a multi-device (DDP) run, which must not write files."""
    from lightning.pytorch.utilities import rank_zero_only

    return rank_zero_only.rank == 0


class RunRecord:
    """The run's metrics.json, rewritten (atomically) every time something is known."""

    def __init__(self, path: Path, **initial: Any):
        self.path = path
        self.data: dict[str, Any] = {}
        self.update(**initial)

    def update(self, **values: Any) -> None:
        self.data.update(values)
        if is_main_process():
            write_json(self.path, self.data)


def cli(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Wrap a Hydra task: a UserError becomes one line on stderr and exit status 2."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except Exception as err:
            user_error = _find_user_error(err)
            if user_error is None:
                raise
            log.error("%s", user_error)
            sys.exit(2)

    return wrapper


def _find_user_error(err: BaseException | None) -> UserError | None:
    """The UserError behind `err`: Hydra's instantiate wraps exceptions raised in constructors."""
    while err is not None:
        if isinstance(err, UserError):
            return err
        err = err.__cause__ or err.__context__
    return None


def quiet_library_noise() -> None:
    """Drop messages that say nothing about the run: Lightning's cloud-service tips and a
    deprecation warning raised inside Lightning itself (not fixable from our side)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(lambda record: "Tip:" not in record.getMessage())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


register_resolvers()
quiet_library_noise()
