"""The study file of a search, opened the same way by the sweeper and by each trial's job.

Optuna is imported inside the functions: Hydra imports every plugin module at each start, and a
plain training run should not pay for Optuna.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.utils import instantiate

if TYPE_CHECKING:
    import optuna


def storage(sweep_dir: str | Path, file_name: str) -> optuna.storages.JournalStorage:
    """Optuna's journal storage in `sweep_dir`/`file_name`: an append-only log that several
    processes (the sweeper and every trial) may write at once, and optuna-dashboard opens."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    path = Path(sweep_dir) / file_name
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def pruner(config: Any) -> optuna.pruners.BasePruner:
    """The configured pruner (hydra.sweeper.pruner); none (never prune) when it is null."""
    import optuna

    return instantiate(config) if config else optuna.pruners.NopPruner()


def trial_by_number(
    study: optuna.Study, backend: optuna.storages.BaseStorage, number: int
) -> optuna.trial.Trial:
    """A running trial of `study` (opened on `backend`), as the process that asked for it would
    hold it: to report to, or to mark."""
    import optuna

    trial_id = backend.get_trial_id_from_study_id_trial_number(
        backend.get_study_id_from_name(study.study_name), number
    )
    return optuna.trial.Trial(study, trial_id)


def job_trial(sweeper: Any, sweep_dir: str, number: int) -> optuna.trial.Trial:
    """Trial `number` of the search a job belongs to, from the job's own Hydra config
    (hydra.sweeper and hydra.sweep.dir, which every job of the search shares)."""
    import optuna

    backend = storage(sweep_dir, sweeper.storage)
    study = optuna.load_study(
        study_name=sweeper.study_name, storage=backend, pruner=pruner(sweeper.get("pruner"))
    )
    return trial_by_number(study, backend, number)
