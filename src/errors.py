"""User-facing errors: one type per kind of mistake, each message names the bad value and the fix.

Entry points catch `UserError` and print its message as one line (no traceback) before exiting
with its `exit_status` (2, or 3 for a diverged run); anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import errno


def first_line(err: BaseException) -> str:
    """A library's error message cut to its first line, to quote inside our one-line errors."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


class UserError(Exception):
    """A mistake the user can fix: bad config, bad data, bad checkpoint."""

    exit_status = 2


class ConfigError(UserError):
    """A config value that cannot work (negative learning rate, unknown preset, ...)."""


class GeometryError(ConfigError):
    """A network whose layers would shrink the image below what the next layer needs."""


class DataError(UserError):
    """Missing, unreadable or inconsistent data, or a download that cannot happen."""


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, or belongs to another network."""


class OutputError(UserError):
    """A run folder, log or checkpoint that cannot be written (no permission, disk full)."""

    @classmethod
    def cannot_write(cls, path: object, err: OSError) -> OutputError:
        full = err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        fix = "free some space or write elsewhere" if full else "write to a writable folder"
        return cls(f"cannot write {path} ({err.strerror or err}): {fix} (hydra.run.dir=PATH)")


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite: the learning rate is too high for the run."""

    exit_status = 3


def find_user_error(err: BaseException | None) -> UserError | None:
    """The UserError behind `err`: Hydra's instantiate wraps exceptions raised in constructors."""
    while err is not None:
        if isinstance(err, UserError):
            return err
        err = err.__cause__ or err.__context__
    return None
