"""Where jobs run: GPU groups and CPU core shares ("slots"), one running job per slot."""

# No `from __future__ import annotations`: Hydra loads plugin modules outside sys.modules,
# where dataclasses cannot resolve string annotations.
import os
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    """One place a job runs: the GPUs it sees (none on the CPU) and the cores it may use."""

    index: int
    devices: tuple[str, ...]
    cores: tuple[int, ...]

    @property
    def label(self) -> str:
        where = f"gpu {','.join(self.devices)}" if self.devices else "cpu"
        return f"{where}, cores {compact(self.cores)}"


def compact(cores: Sequence[int]) -> str:
    """0,1,2,3,8 -> '0-3,8' (how taskset and /proc write core lists)."""
    runs: list[list[int]] = []
    for core in sorted(cores):
        if runs and runs[-1][1] == core - 1:
            runs[-1][1] = core
        else:
            runs.append([core, core])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def usable_cores() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def detect_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (ids or UUIDs)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    from src.devices import gpu_count  # without a GPU driver, without importing torch

    return [str(i) for i in range(gpu_count())]


def resolve_devices(
    devices: str | int | Sequence[int | str] | None, accelerator: str = "auto"
) -> list[str]:
    """`auto`: every visible GPU, or none for jobs that train on the CPU (trainer.accelerator=cpu:
    they share the cores); a list: exactly those; None, [] or `cpu`: no GPU."""
    if devices is None or devices == "cpu":
        return []
    if devices == "auto":
        return [] if accelerator == "cpu" else detect_gpus()
    if isinstance(devices, (int, str)):
        devices = [devices]
    return [str(d) for d in devices]


def split(items: Sequence[int], parts: int) -> list[tuple[int, ...]]:
    """`parts` near-equal consecutive shares of items (shared round-robin when too few)."""
    if len(items) < parts:
        return [(items[i % len(items)],) for i in range(parts)]
    size, extra = divmod(len(items), parts)
    shares, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        shares.append(tuple(items[start:end]))
        start = end
    return shares


def plan_slots(
    gpus: Sequence[str],
    jobs_per_device: int,
    devices_per_job: int,
    cpu_jobs: int | None,
    n_jobs: int,
    cores: Sequence[int],
) -> list[Slot]:
    """The slots for a batch of `n_jobs` jobs, with the cores split evenly between them.

    With GPUs: `jobs_per_device` slots on each group of `devices_per_job` GPUs. Without: `cpu_jobs`
    slots (default: one per core). Never more slots than jobs, so a short sweep gets more cores
    per job.
    """
    if jobs_per_device < 1 or devices_per_job < 1:
        raise ValueError("hydra.launcher.jobs_per_device and devices_per_job must be at least 1")
    if gpus:
        if devices_per_job > len(gpus):
            raise ValueError(
                f"each job wants {devices_per_job} GPUs but only {len(gpus)} are visible "
                f"({','.join(gpus)}): lower trainer.devices or hydra.launcher.devices_per_job"
            )
        groups = [
            tuple(gpus[i : i + devices_per_job])
            for i in range(0, len(gpus) - devices_per_job + 1, devices_per_job)
        ]
        placements = [group for group in groups for _ in range(jobs_per_device)]
    else:
        n = cpu_jobs if cpu_jobs else len(cores)
        if n < 1:
            raise ValueError(f"hydra.launcher.cpu_jobs must be at least 1, got {n}")
        placements = [()] * n
    placements = placements[: max(1, n_jobs)]
    shares = split(list(cores), len(placements))
    pairs = zip(placements, shares, strict=True)
    return [Slot(i, devices, share) for i, (devices, share) in enumerate(pairs)]
