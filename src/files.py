"""Files written whole or not at all: the one atomic write of the project (run records, configs,
the launchers' summaries and job results). Imports nothing heavy, so the launchers can use it."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from src.errors import OutputError


@contextmanager
def atomic_write(path: Path, mode: str = "w") -> Iterator[IO]:
    """Write `path` through a file beside it that replaces it, flushed to disk, when the block
    ends: readers see the old file or the new one, never half of one. On an error the old file
    stays and the temporary one is removed; a kill can leave only a hidden `.<name>.*.tmp`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    # os.open rather than mkstemp: the file gets the usual permissions (mkstemp's are 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write a file atomically (see atomic_write); OutputError when it cannot be written."""
    try:
        with atomic_write(path) as file:
            file.write(text)
    except OSError as err:
        raise OutputError.cannot_write(path, err) from err


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (see write_text); values JSON has no type for are written as text."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")
