"""What every entry point shares: config resolvers, thread counts, error handling, run records."""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import re
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import (
    CompactHydraException,
    ConfigCompositionException,
    MissingConfigException,
    OverrideParseException,
)
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from src.errors import OutputError, UserError
from src.files import write_json

log = logging.getLogger(__name__)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def register_resolvers() -> None:
    """Resolvers the configs use; registered before Hydra composes anything."""
    from src.devices import auto_precision
    from src.models.scaling import conv_widths

    resolvers = {
        "auto_precision": auto_precision,
        # The process id makes run folders unique even for runs started in the same second.
        "pid": os.getpid,
        "cores": available_cores,
        # The general ConvNet preset (conf/model/convnet.yaml): its per-layer widths.
        "conv_widths": conv_widths,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def set_threads(threads: int | None) -> int:
    """Use `threads` CPU threads for torch (default: every core this process may run on), and
    keep freed memory for reuse (keep_freed_memory)."""
    n = threads or available_cores()
    torch.set_num_threads(n)
    keep_freed_memory()
    return n


def keep_freed_memory() -> None:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    A training step frees and allocates the same activation buffers every time. By default
    glibc returns the large ones (munmap, heap trimming) and the next step faults them in
    again, zero-filled: measured up to 700 page faults per batch-64 step of the tutorial net
    under Lightning, against 15 in a plain loop, and a tenth of its CPU time (benchmarks,
    docs/speed.md). Fixed thresholds (which also switch off glibc's adaptive ones) keep those
    buffers mapped. Without glibc (macOS, musl) this does nothing.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # from glibc's malloc.h
    mallopt(m_mmap_threshold, 32 << 20)  # the largest glibc accepts: larger blocks are mapped
    mallopt(m_trim_threshold, 1 << 30)  # the heap's free top is returned only beyond 1 GiB
    mallopt(m_top_pad, 64 << 20)  # and grows 64 MiB at a time


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
        keep_run_folder(path.parent)  # the run has begun: its folder stays, whatever happens

    def update(self, **values: Any) -> None:
        self.data.update(values)
        if is_main_process():
            write_json(self.path, self.data)  # OutputError when the folder cannot be written


# What each single run's folder held before Hydra wrote into it (None: it did not exist), until
# the run records itself (RunRecord): a mistake caught before then leaves the folder as it was.
_FOLDERS_BEFORE: dict[Path, set[str] | None] = {}


class RunFolderGuard(Callback):
    """Hydra callback (conf/hydra/default.yaml): note what the run folder holds before Hydra
    creates it and writes its config and log there. Single runs only: a failed sweep job keeps
    its folder, whose metrics.json the sweep's report and summary read."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(str(config.hydra.run.dir)).absolute()
        _FOLDERS_BEFORE[folder] = set(os.listdir(folder)) if folder.is_dir() else None


def keep_run_folder(folder: Path) -> None:
    _FOLDERS_BEFORE.pop(Path(folder).absolute(), None)


def will_restore_run_folder(folder: Path) -> bool:
    """Whether a mistake caught now would put `folder` back as it was (see restore_run_folder)."""
    return Path(folder).absolute() in _FOLDERS_BEFORE


def restore_run_folder(folder: Path) -> None:
    """Remove what this run added to its folder (the whole folder if the run created it), unless
    the run has begun (see RunRecord), so a mistake leaves no folder of debris behind."""
    folder = Path(folder).absolute()
    if folder not in _FOLDERS_BEFORE:
        return
    before = _FOLDERS_BEFORE.pop(folder)
    if before is None:
        shutil.rmtree(folder, ignore_errors=True)
        for parent in folder.parents:  # the date folder Hydra made for it, when now empty
            try:
                parent.rmdir()
            except OSError:
                break
        return
    for name in set(os.listdir(folder)) - before:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def cli(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Wrap a Hydra task: a UserError becomes one line (also in the run's log) and its exit
    status (2; 3 for a diverged run); a single run stopped by one before it began leaves its
    folder as it found it (restore_run_folder)."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        quiet_library_noise()  # again: a test harness may have reset the warning filters
        route_library_logs()
        try:
            return task(cfg)
        except Exception as err:
            user_error = find_user_error(err)
            if user_error is None:
                raise
            log.error("%s", user_error)
            if HydraConfig.initialized():
                restore_run_folder(Path(HydraConfig.get().runtime.output_dir))
            sys.exit(user_error.exit_status)

    return wrapper


# Errors writing a run folder Hydra creates before the task starts (its own copy of the config,
# the log): no permission, a file where a folder should be, a full disk or quota.
UNWRITABLE = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
}


def entry_point(main: Callable[[], Any]) -> Callable[[], Any]:
    """Wrap a `@hydra.main` function: Hydra's own errors become one line and exit status 2.

    Hydra reports an unknown config option (model=nope) or a bad override as a paragraph plus a
    hint about HYDRA_FULL_ERROR, and exits with status 1; a run folder it cannot create ends in a
    traceback. With HYDRA_FULL_ERROR set Hydra raises these instead, and they are reported here.
    A user who sets HYDRA_FULL_ERROR=1 gets Hydra's full report, as documented; a job process
    started during the run inherits the variable with a marker saying it was set here.
    """

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        set_here = "CIFAR10_LAB_SET_HYDRA_FULL_ERROR"
        if os.environ.get("HYDRA_FULL_ERROR") == "1" and set_here not in os.environ:
            return main(*args, **kwargs)
        os.environ.update({"HYDRA_FULL_ERROR": "1", set_here: "1"})
        try:
            return main(*args, **kwargs)
        except (ConfigCompositionException, OverrideParseException) as err:
            _exit_with(config_error_line(err))
        except UserError as err:  # raised by a launcher (a SLURM request the cluster refuses)
            _exit_with(str(err))
        except CompactHydraException as err:  # the sweep launcher: "2 of 8 jobs did not finish"
            print(f"[ERROR] {err}", file=sys.stderr)
            sys.exit(1)
        except (OSError, ValueError) as err:
            # Python's logging reports a log file it cannot open as a ValueError caused by it.
            cause = err if isinstance(err, OSError) else err.__cause__
            if not isinstance(cause, OSError) or cause.errno not in UNWRITABLE:
                raise
            _exit_with(str(OutputError.cannot_write(cause.filename or "the run folder", cause)))
        finally:
            os.environ.pop("HYDRA_FULL_ERROR", None)
            os.environ.pop(set_here, None)

    return wrapper


# Keys that moved, for the one line that refuses the old name.
MOVED_KEYS = {
    "label_smoothing": "model.label_smoothing",
    "channels_last": "model.channels_last",
    "compile": "model.compile",
}


def config_error_line(err: Exception) -> str:
    """Hydra's config error as one line; an unknown option lists the valid ones, a moved key
    names its new place."""
    moved = re.search(r"Could not override '([\w.]+)'", str(err))
    if moved and moved.group(1) in MOVED_KEYS:
        old, new = moved.group(1), MOVED_KEYS[moved.group(1)]
        return f"{old} is now {new}: write {new}=<value>"
    if isinstance(err, MissingConfigException) and "/" in (err.missing_cfg_file or ""):
        group, name = err.missing_cfg_file.rsplit("/", 1)
        choices = f"choose one of {', '.join(err.options)}" if err.options else "there are none"
        return f"unknown {group} '{name}': {choices} (the files in conf/{group}/)"
    text = str(err).split("Config search path")[0]
    if err.__cause__ is not None and "\n" not in str(err.__cause__).strip():
        text += f" ({err.__cause__})"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _exit_with(line: str) -> None:
    print(f"[ERROR] {line}", file=sys.stderr)
    sys.exit(2)


def find_user_error(err: BaseException | None) -> UserError | None:
    """The UserError behind `err`: Hydra's instantiate wraps exceptions raised in constructors."""
    while err is not None:
        if isinstance(err, UserError):
            return err
        err = err.__cause__ or err.__context__
    return None


def _no_tips(record: logging.LogRecord) -> bool:
    return "Tip:" not in record.getMessage()


# Lightning warnings that say nothing about the run:
LIBRARY_NOISE = (
    # a deprecation raised inside Lightning itself (not fixable from our side)
    r".*isinstance\(treespec, LeafSpec\).*",
    # on any machine with SLURM installed; SLURM runs go through hydra/launcher=slurm*
    r"The `srun` command is available on your system but is not used",
    # best.ckpt's monitor before the first validation (a run stopped by trainer.max_steps);
    # once validation has run, Lightning raises an error for a missing key instead
    r".*ModelCheckpoint\(monitor=.*could not find the monitored key",
)


def quiet_library_noise() -> None:
    """Drop messages that say nothing about the run: Lightning's cloud-service tips and the
    warnings in LIBRARY_NOISE."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _no_tips not in logger.filters:
            logger.addFilter(_no_tips)
    for pattern in LIBRARY_NOISE:
        warnings.filterwarnings("ignore", message=pattern)


def route_library_logs() -> None:
    """Send Lightning's messages ("GPU available", "Trainer.fit stopped", ...) through the
    handlers Hydra configured, so the run's log holds them as the console shows them. Lightning
    gives itself console handlers of its own when it is imported before logging is set up."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if logging.getLogger().handlers:
            logger.handlers.clear()
            logger.propagate = True


def to_log_file(text: str, name: str = __name__) -> None:
    """Write `text` to the run's log file only (as logger `name`): for what the console shows
    in its own way (tables, progress bars)."""
    record = logging.LogRecord(name, logging.INFO, __file__, 0, "%s", (text,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


register_resolvers()
quiet_library_noise()
