"""Devices under Hydra: GPUs asked for that are not there, and Lightning's DDP relaunch kept from
re-running a sweep."""

from __future__ import annotations

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

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


def check_devices(trainer: DictConfig) -> None:
    """Fail in one line, before anything is built, when trainer.accelerator asks for GPUs the
    machine does not have (Lightning would fail later, inside its Trainer, in a paragraph)."""
    accelerator, devices = trainer.get("accelerator"), trainer.get("devices")
    if accelerator not in ("gpu", "cuda"):
        return
    found = torch.cuda.device_count()  # asks the driver (NVML) without initialising CUDA
    if found == 0:
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no GPU was found: use trainer.accelerator=cpu "
            "(or trainer=cpu), or trainer.accelerator=auto to use a GPU when there is one"
        )
    if isinstance(devices, int) and devices > found:
        raise ConfigError(
            f"trainer.devices={devices} but only {found} GPU{'s' * (found > 1)} found: "
            f"use trainer.devices={found} or fewer"
        )
