"""What every benchmark section shares: configs, data, networks, clocks and machine facts."""

from __future__ import annotations

import logging
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
from src.data import CIFAR10DataModule
from src.resolvers import register_resolvers
from src.threads import available_cores

# The configs that go with the `src` imported (another checkout's, to compare before and after).
log = logging.getLogger(__name__)

CONF = Path(src.__file__).resolve().parents[1] / "conf"


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
    matmul_sizes: tuple[int, ...]  # square fp32 matrix multiplies timed for the peak
    pipeline_seconds: float  # per preset, batch size and round
    sweep_jobs: int
    sweep_overrides: tuple[str, ...]  # one sweep job's settings
    memory_jobs: int
    memory_overrides: tuple[str, ...]  # the job whose memory is measured
    quiet_wait: float  # seconds to wait for other processes to go quiet before each measure


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
    matmul_sizes=(512, 1024, 2048, 4096),
    pipeline_seconds=1.0,
    sweep_jobs=4,
    sweep_overrides=("data.batch_size=64", "trainer.max_epochs=1"),
    memory_jobs=2,
    memory_overrides=("data.batch_size=256", "trainer.max_epochs=2"),
    quiet_wait=5.0,
)

QUICK = Scale(
    name="quick",
    warmup=1,
    batches={4: 5, 64: 2, 256: 1},
    rounds=1,
    eval_every=0.25,
    seeds_max_epochs=2,
    flops_batches=2,
    matmul_sizes=(256,),
    pipeline_seconds=0.05,
    sweep_jobs=2,
    sweep_overrides=("data.batch_size=16", "trainer.max_epochs=1"),
    memory_jobs=2,
    memory_overrides=("data.batch_size=16", "trainer.max_epochs=1"),
    quiet_wait=0.0,
)


def compose_train(overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """The train config as `python -m src.train <overrides>` composes it, writing to output_dir."""
    register_resolvers()
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


def build_net(cfg: DictConfig, num_classes: int) -> nn.Module:
    """The network of `cfg` (freshly initialised)."""
    return instantiate(cfg.model.net, num_classes=num_classes)


def train_flops_per_image(net: nn.Module, batch: int = 8) -> float:
    """FLOPs of one training step per image (forward and backward), as torch counts them."""
    images = torch.randn(batch, 3, 32, 32)
    labels = torch.zeros(batch, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(net(images), labels).backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def step_times(
    steps: Iterable[object], warmup: int, timed: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Seconds per step over `timed` steps after `warmup` steps (iterating `steps` runs them),
    by `clock` (wall time; time.process_time for the process's CPU time)."""
    start = None
    done = 0
    for i, _ in enumerate(steps):
        if i + 1 == warmup:
            start = clock()
        elif i + 1 == warmup + timed:
            done = timed
            break
    if start is None or not done:
        raise ValueError(f"ran out of steps before {warmup} + {timed} (too little data?)")
    return (clock() - start) / timed


def others_cpu(interval: float = 0.25) -> float:
    """Cores' worth of CPU that other processes used over the next `interval` seconds."""

    def busy() -> float:  # seconds of CPU used on the whole machine since boot
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle, iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def own() -> float:
        times = os.times()
        return times.user + times.system

    busy0, own0 = busy(), own()
    time.sleep(interval)
    return max(0.0, (busy() - busy0) - (own() - own0)) / interval


def wait_for_quiet(max_wait: float, threshold: float = 0.5) -> bool:
    """Wait (up to max_wait seconds) until other processes use less than `threshold` of a core.

    On a machine shared with other jobs, two torch threads slow down many times over whenever
    another process takes a core; measuring in quiet moments keeps that out of the numbers.
    """
    deadline = time.monotonic() + max_wait
    while True:
        if others_cpu() < threshold:
            return True
        if time.monotonic() >= deadline:
            log.info("the machine stayed busy for %.0f s; measuring anyway", max_wait)
            return False
        time.sleep(0.5)


def best_of(rounds: int, *measures: Callable[[], float], quiet_wait: float = 0.0) -> list[float]:
    """Run the measures in turn, `rounds` times; the best (lowest) value of each.

    Interleaving keeps slow drifts of a shared machine from favouring one measure; the minimum
    is the least disturbed of the rounds. Each measure waits for a quiet machine first (up to
    `quiet_wait` seconds).
    """
    results: list[list[float]] = [[] for _ in measures]
    for _ in range(rounds):
        for values, measure in zip(results, measures, strict=True):
            if quiet_wait:
                wait_for_quiet(quiet_wait)
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
