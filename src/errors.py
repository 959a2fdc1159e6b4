"""User-facing errors: one type per kind of mistake, each message names the bad value and the fix.

Entry points catch `UserError` and print its message as one line (no traceback) before exiting
with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: bad config, bad data, bad checkpoint."""


class ConfigError(UserError):
    """A config value that cannot work (negative learning rate, unknown preset, ...)."""


class GeometryError(ConfigError):
    """A network whose layers would shrink the image below what the next layer needs."""


class DataError(UserError):
    """Missing, unreadable or inconsistent data, or a download that cannot happen."""


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, or belongs to another network."""
