"""What the command-line tools share: a mistake becomes one line and exit status 2.

Two styles, one convention each. train, eval and predict are Hydra apps (`entry_point` and
`cli`). The other tools (src.report, src.reproduce, the benchmarks) use `ToolParser` and
`run_tool`: `--flags` for the tool itself, `--out` for where it writes, and positional Hydra
overrides (`data.root=PATH`) for the runs it makes, where it makes any. Every tool prints a mistake
as one `[ERROR] ...` line (`exit_with`).
"""

from __future__ import annotations

import argparse
import errno
import functools
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.errors import (
    CompactHydraException,
    ConfigCompositionException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf import DictConfig

from src.errors import OutputError, UserError, find_user_error
from src.logs import quiet_library_noise, route_library_logs
from src.resolvers import register_resolvers
from src.run_folder import restore_run_folder

log = logging.getLogger(__name__)


def error_line(line: str) -> None:
    print(f"[ERROR] {line}", file=sys.stderr)


def exit_with(line: str, status: int = 2) -> NoReturn:
    """End the program with one line saying what is wrong and how to fix it."""
    error_line(line)
    sys.exit(status)


class ToolParser(argparse.ArgumentParser):
    """The command line of a tool that is not a Hydra app: `prog` is how to call it
    (`python -m ...`), `overrides` (the help of the positional Hydra overrides) where the tool
    passes them to the runs it makes, and a bad argument is one line and exit status 2 instead of
    argparse's usage block."""

    def __init__(self, prog: str, description: str, overrides: str | None = None):
        super().__init__(prog=prog, description=description)
        if overrides:
            self.add_argument("overrides", nargs="*", metavar="OVERRIDE", help=overrides)

    def error(self, message: str) -> NoReturn:
        exit_with(f"{message} (see {self.prog} --help)")


def run_tool(work: Callable[[], int | None]) -> int:
    """Run a tool's work, logging `[LEVEL] message` lines: a UserError becomes one line and its
    exit status (2). Returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    quiet_library_noise()
    try:
        return work() or 0
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None:
            raise
        error_line(str(user_error))
        return user_error.exit_status


def cli(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Wrap a Hydra task: a UserError becomes one line (also in the run's log) and its exit
    status (2; 3 for a diverged run); a single run stopped by one before it began leaves its
    folder as it found it (restore_run_folder)."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        # Again here: a sweep job's own process (the launcher's child) runs only this wrapper,
        # and a test harness may have reset the warning filters.
        register_resolvers()
        quiet_library_noise()
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
    """Wrap a `@hydra.main` function: register the resolvers and quiet library noise before
    Hydra composes anything, and turn Hydra's own errors into one line and exit status 2.

    Hydra reports an unknown config option (model=nope) or a bad override as a paragraph plus a
    hint about HYDRA_FULL_ERROR, and exits with status 1; a run folder it cannot create ends in a
    traceback. With HYDRA_FULL_ERROR set Hydra raises these instead, and they are reported here.
    A user who sets HYDRA_FULL_ERROR=1 gets Hydra's full report, as documented; a job process
    started during the run inherits the variable with a marker saying it was set here.
    """

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        register_resolvers()
        quiet_library_noise()
        set_here = "CIFAR10_LAB_SET_HYDRA_FULL_ERROR"
        if os.environ.get("HYDRA_FULL_ERROR") == "1" and set_here not in os.environ:
            return main(*args, **kwargs)
        os.environ.update({"HYDRA_FULL_ERROR": "1", set_here: "1"})
        try:
            return main(*args, **kwargs)
        except (ConfigCompositionException, OverrideParseException) as err:
            exit_with(config_error_line(err))
        except UserError as err:  # raised by a launcher (a SLURM request the cluster refuses)
            exit_with(str(err))
        except CompactHydraException as err:  # the sweep launcher: "2 of 8 jobs did not finish"
            exit_with(str(err), status=1)
        except (OSError, ValueError) as err:
            # Python's logging reports a log file it cannot open as a ValueError caused by it.
            cause = err if isinstance(err, OSError) else err.__cause__
            if not isinstance(cause, OSError) or cause.errno not in UNWRITABLE:
                raise
            exit_with(str(OutputError.cannot_write(cause.filename or "the run folder", cause)))
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
