"""Multi-process training under Hydra: keep Lightning's DDP relaunch from re-running a sweep."""

from __future__ import annotations

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from src.errors import ConfigError

# Launchers that give each job a process of its own, so a DDP relaunch re-runs only that job
# (ours), or that start the ranks themselves (SLURM through submitit).
SAFE_LAUNCHERS = ("ParallelLauncher", "SlurmLauncher")


def check_ddp_launch(trainer: L.Trainer) -> None:
    """Fail before training when Lightning's DDP would re-run the whole Hydra multirun.

    Lightning starts DDP ranks 1.. by re-running this process's command line; under `-m` with a
    launcher that runs jobs in the launching process (hydra/launcher=basic, joblib), that command
    is the whole sweep, which every rank would then run again.
    """
    launcher = getattr(trainer.strategy, "launcher", None)
    if launcher is None or type(launcher).__name__ != "_SubprocessScriptLauncher":
        return
    if launcher.cluster_environment.creates_processes_externally:
        return
    hydra = HydraConfig.get()
    target = str(hydra.launcher.get("_target_", ""))
    if hydra.mode == RunMode.MULTIRUN and not target.endswith(SAFE_LAUNCHERS):
        raise ConfigError(
            f"trainer.strategy=ddp under -m with launcher {target.rsplit('.', 1)[-1]} would make "
            "every DDP rank re-run the whole sweep: use the default launcher "
            "(hydra/launcher=parallel) or hydra/launcher=slurm_ddp, or run the job without -m"
        )
