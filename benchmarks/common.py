"""What every benchmark section shares: configs, data, networks, clocks and machine facts."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import src
import src.run  # noqa: F401  (registers the config resolvers)
from src.data import CIFAR10DataModule
from src.run import available_cores

# The configs that go with the `src` imported (another checkout's, to compare before and after).
CONF = Path(src.__file__).resolve().parents[1] / "conf"

# Seed 002's model 3 (docs seed-models.md): three blocks of two 3x3 convs, then 4096-1024-512.
VGG_LIKE = {
    "channels": [32, 64, 128, 128, 256, 256],
    "kernel_size": 3,
    "padding": 1,
    "pool": [False, True, False, True, False, True],
    "hidden": [1024, 512],
}


@dataclass
class Scale:
    """How much work each section does: `full` for the real benchmark, `quick` for tests."""

    name: str
    warmup: int  # batches run before the clock starts
    batches: dict[int, int]  # batch size -> timed batches per round
    rounds: int  # rounds of each measurement; the best round counts (least disturbed)
    eval_every: float  # epochs between accuracy checks in time-to-accuracy runs
    seeds_max_epochs: int  # the seeds' loop gets this long to reach the target
    flops_batches: int  # timed batches per net for FLOP/s (at the net's batch size)
    matmul_size: int
    pipeline_seconds: float  # per preset, batch size and round
    sweep_jobs: int
    sweep_overrides: tuple[str, ...]  # one sweep job's settings
    memory_jobs: int
    memory_overrides: tuple[str, ...]  # the job whose memory is measured


FULL = Scale(
    name="full",
    warmup=20,
    # Short windows, many rounds: on a shared machine a short window is more likely to catch
    # a quiet moment, and the best round is the least disturbed.
    batches={4: 400, 64: 60, 256: 16},
    rounds=5,
    eval_every=0.1,
    seeds_max_epochs=3,
    flops_batches=8,
    matmul_size=2048,
    pipeline_seconds=1.0,
    sweep_jobs=4,
    sweep_overrides=("data.batch_size=64", "trainer.max_epochs=1"),
    memory_jobs=2,
    memory_overrides=("data.batch_size=256", "trainer.max_epochs=2"),
)

QUICK = Scale(
    name="quick",
    warmup=1,
    batches={4: 5, 64: 2, 256: 1},
    rounds=1,
    eval_every=0.25,
    seeds_max_epochs=2,
    flops_batches=2,
    matmul_size=256,
    pipeline_seconds=0.05,
    sweep_jobs=2,
    sweep_overrides=("data.batch_size=16", "trainer.max_epochs=1"),
    memory_jobs=2,
    memory_overrides=("data.batch_size=16", "trainer.max_epochs=1"),
)


def compose_train(overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """The train config as `python -m src.train <overrides>` composes it, writing to output_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[*overrides, f"paths.output_dir={output_dir}"],
            return_hydra_config=True,
        )
    # Configs read Hydra's runtime (${hydra:...}) as in a real run: give them one.
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def load_data(cfg: DictConfig) -> CIFAR10DataModule:
    """The data module of `cfg`, set up (the cache is built the first time, never timed)."""
    dm: CIFAR10DataModule = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def build_net(cfg: DictConfig, num_classes: int, **net: object) -> nn.Module:
    """The configured network (`net` replaces its arguments, e.g. VGG_LIKE)."""
    if net:
        return instantiate({"_target_": cfg.model.net._target_, **net}, num_classes=num_classes)
    return instantiate(cfg.model.net, num_classes=num_classes)


def train_flops_per_image(net: nn.Module, batch: int = 8) -> float:
    """FLOPs of one training step per image (forward and backward), as torch counts them."""
    images = torch.randn(batch, 3, 32, 32)
    labels = torch.zeros(batch, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(net(images), labels).backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def step_times(steps: Iterable[object], warmup: int, timed: int) -> float:
    """Seconds per step over `timed` steps after `warmup` steps (iterating `steps` runs them)."""
    start = None
    done = 0
    for i, _ in enumerate(steps):
        if i + 1 == warmup:
            start = time.perf_counter()
        elif i + 1 == warmup + timed:
            done = timed
            break
    if start is None or not done:
        raise ValueError(f"ran out of steps before {warmup} + {timed} (too little data?)")
    return (time.perf_counter() - start) / timed


def best_of(rounds: int, *measures: Callable[[], float]) -> list[float]:
    """Run the measures in turn, `rounds` times; the best (lowest) value of each.

    Interleaving keeps slow drifts of a shared machine from favouring one measure; the minimum
    is the least disturbed of the rounds.
    """
    results: list[list[float]] = [[] for _ in measures]
    for _ in range(rounds):
        for values, measure in zip(results, measures, strict=True):
            values.append(measure())
    return [min(values) for values in results]


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": available_cores(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()),
    }
