"""A single run's folder: its record (metrics.json), and the guard that puts the folder back as
it was when a mistake stops the run before it begins."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from src.files import write_json


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
