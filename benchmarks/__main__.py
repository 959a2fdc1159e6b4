"""Speed, measured: `python -m benchmarks [options] [train overrides]` (`make bench` runs it).

Every section runs in this one command on this one machine, so the ratios the targets speak of
compare measurements taken side by side. Writes <out>.json and <out>.md and prints the table.

    python -m benchmarks data.source=folder data.root=$HOME/.cache/cifar10-lab/cifar10-jpeg
    python -m benchmarks --sections per_batch,flops --out /tmp/bench ...
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks import accuracy, compute, gpu, processes
from benchmarks.common import (
    FULL,
    QUICK,
    Scale,
    best_of,
    build_net,
    compose_train,
    load_data,
    machine_info,
    step_times,
    train_flops_per_image,
    wait_for_quiet,
)
from benchmarks.loops import (
    SEED_RECIPE,
    lab_step_time,
    memory_loader,
    plain_steps,
    seeds_loader,
    seeds_steps,
)
from benchmarks.report import markdown, targets
from src.cli import ToolParser, run_tool
from src.data import CIFAR10DataModule
from src.errors import ConfigError
from src.files import write_json
from src.threads import set_threads

log = logging.getLogger("benchmarks")

SECTIONS = ("pipeline", "per_batch", "flops", "time_to_accuracy", "sweep", "memory", "gpu")
# cifar10-lab's fastest recipe for the tutorial net to the target (conf/experiment/).
FAST_RECIPE = ("experiment=tutorial_fast",)
# The nets compared with the machine's limit: the tutorial net and seed 002's VGG-like net.
NETS = {"tutorial": ("model=tutorial",), "vgg6": ("model=vgg6",)}
# An epoch is the whole training split, as the issue counts it.
EPOCH_IMAGES = 50_000


class Bench:
    """The sections, sharing one data module and one scratch folder."""

    def __init__(self, base: list[str], scale: Scale, scratch: Path, target: float):
        self.base, self.scale, self.scratch, self.target = base, scale, scratch, target
        self.cfg = compose_train([*base, *SEED_RECIPE], scratch / "cfg")
        self.threads = set_threads(self.cfg.threads)
        # Builds the cache the first time (untimed); later sections map it.
        self.dm: CIFAR10DataModule = load_data(self.cfg)

    @property
    def quiet(self) -> float:
        return self.scale.quiet_wait

    def wait(self) -> None:
        """Wait for other processes to go quiet (up to the scale's quiet_wait)."""
        if self.quiet:
            wait_for_quiet(self.quiet)

    def lab(
        self, batch: int, timed: int, *extra: str, warmup: int | None = None, cpu: bool = False
    ) -> float:
        """cifar10-lab's seconds per batch: wall time, or with cpu=True the CPU time of one
        thread."""
        overrides = [*self.base, *SEED_RECIPE, f"data.batch_size={batch}", *extra]
        warmup = self.scale.warmup if warmup is None else warmup
        if cpu:
            return lab_step_time(
                [*overrides, "threads=1"], warmup, timed, self.scratch / "lab", time.process_time
            )
        return lab_step_time(overrides, warmup, timed, self.scratch / "lab")

    def plain(self, batch: int, timed: int, cpu: bool = False) -> float:
        """The plain loop's seconds per batch (wall, or with cpu=True one thread's CPU time)."""
        set_threads(1 if cpu else self.threads)
        net = build_net(self.cfg, self.dm.num_classes)
        steps = plain_steps(net, memory_loader(self.dm, batch))
        clock = time.process_time if cpu else time.perf_counter
        return step_times(steps, self.scale.warmup, timed, clock)

    def seeds(self, batch: int, timed: int) -> float:
        set_threads(self.threads)
        net = build_net(self.cfg, self.dm.num_classes)
        steps = seeds_steps(net, seeds_loader(self.cfg, batch))
        return step_times(steps, self.scale.warmup, timed)

    # -- sections ----------------------------------------------------------------------------

    def pipeline(self) -> dict:
        self.wait()
        return compute.pipeline_rates(
            self.dm, (4, 256), self.scale.pipeline_seconds, self.scale.rounds
        )

    def per_batch(self) -> dict:
        """Items 2 and 3: ms per batch of the three loops (the seeds' loop at batch 4 only).

        Wall time with the configured threads, and the CPU time of one thread: on a machine
        shared with other work, two threads stall whenever another process takes a core, while
        one thread's CPU time barely changes, so the overhead in CPU time is the steadier
        figure of the extra work a batch costs.
        """
        out = {}
        for batch, timed in self.scale.batches.items():
            measures: dict[str, Callable[[], float]] = {
                "plain_ms": lambda b=batch, t=timed: self.plain(b, t),
                "cifar10_lab_ms": lambda b=batch, t=timed: self.lab(b, t),
                "plain_cpu_ms": lambda b=batch, t=timed: self.plain(b, t, cpu=True),
                "cifar10_lab_cpu_ms": lambda b=batch, t=timed: self.lab(b, t, cpu=True),
            }
            if batch == 4:
                measures["seeds_loop_ms"] = lambda t=timed: self.seeds(4, t)
            values = best_of(self.scale.rounds, *measures.values(), quiet_wait=self.quiet)
            row = {k: round(v * 1e3, 3) for k, v in zip(measures, values, strict=True)}
            row["overhead"] = round(row["cifar10_lab_ms"] / row["plain_ms"] - 1, 3)
            row["overhead_cpu"] = round(row["cifar10_lab_cpu_ms"] / row["plain_cpu_ms"] - 1, 3)
            out[f"batch {batch}"] = row
            log.info("batch %d: %s", batch, row)
        set_threads(self.threads)
        return out

    def flops(self) -> dict:
        """Item 4: achieved training FLOP/s against the fp32 matrix-multiply peak."""
        self.wait()
        # The best of a few sizes: the machine's limit, not one size's.
        peak = max(compute.matmul_peak(size) for size in self.scale.matmul_sizes)
        out: dict = {"matmul_peak_gflops": round(peak / 1e9, 1)}
        batches = {"tutorial": 256, "vgg6": 64}
        warmup = min(3, self.scale.warmup)  # a few warm-up batches do: these batches are long
        timed = self.scale.flops_batches
        for name, overrides in NETS.items():
            batch = batches[name]
            cfg = compose_train([*self.base, *overrides], self.scratch / "cfg")
            per_image = train_flops_per_image(build_net(cfg, self.dm.num_classes))
            (seconds,) = best_of(
                self.scale.rounds,
                lambda b=batch, o=overrides: self.lab(b, timed, *o, warmup=warmup),
                quiet_wait=self.quiet,
            )
            achieved = per_image * batch / seconds
            out[name] = {
                "batch": batch,
                "mflop_per_image": round(per_image / 1e6, 2),
                "ms_per_batch": round(seconds * 1e3, 2),
                "gflops": round(achieved / 1e9, 1),
                "epoch_s": round(seconds * EPOCH_IMAGES / batch, 2),
                "floor_epoch_s": round(per_image * EPOCH_IMAGES / peak, 2),
                "times_floor": round(peak / achieved, 2),
            }
            log.info("%s: %s", name, out[name])
        return out

    def time_to_accuracy(self) -> dict:
        """Item 1: time to the target test accuracy, the seeds' loop against cifar10-lab's."""
        self.wait()
        lab = accuracy.lab_time_to_accuracy(
            self.base, FAST_RECIPE, self.target, self.scale.eval_every, self.scratch / "tta"
        )
        log.info("cifar10-lab: %s", {k: v for k, v in lab.items() if k != "curve"})
        self.wait()
        seeds = accuracy.seeds_time_to_accuracy(
            self.base,
            self.target,
            self.scale.eval_every,
            self.scale.seeds_max_epochs,
            self.scratch / "tta",
        )
        log.info("seeds' loop: %s", {k: v for k, v in seeds.items() if k != "curve"})
        ratio = lab["time_s"] / seeds["time_s"] if lab["reached"] and seeds["reached"] else None
        return {
            "target_acc": self.target,
            "seeds_loop": seeds,
            "cifar10_lab": lab,
            "ratio": round(ratio, 4) if ratio is not None else None,
        }

    def sweep(self) -> dict:
        """Item 6: a sweep in parallel against one job at a time."""
        self.wait()
        return processes.sweep(
            self.base, self.scale.sweep_overrides, self.scale.sweep_jobs, self.scratch / "sweep"
        )

    def memory(self) -> dict:
        """Item 7: PSS of one job and of N jobs side by side; the data set's pages held once?"""
        self.wait()
        return processes.memory(
            self.base,
            self.scale.memory_overrides,
            self.scale.memory_jobs,
            self.dm.data.path / "train_images.npy",
            self.scratch / "memory",
        )

    def gpu(self) -> dict:
        """Item 8: images per second on a GPU (skipped without one)."""
        base = [o for o in self.base if not o.startswith("trainer.accelerator")]
        return gpu.gpu_rates(
            base, NETS, self.scale.warmup, self.scale.batches[256], self.scratch / "gpu"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ToolParser(
        "python -m benchmarks",
        "Time to accuracy and per-batch speed against the seeds' loop and the machine's limit.",
        overrides="train overrides, e.g. data.root=PATH",
    )
    parser.add_argument("--quick", action="store_true", help="tiny counts (for tests), not speed")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write OUT.json and OUT.md (default: results/bench/<cpu|gpu>)",
    )
    parser.add_argument("--target", type=float, default=53.0, help="test accuracy %% to reach")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown benchmark sections {unknown}: choose from {list(SECTIONS)}")
    out = args.out or Path(__file__).resolve().parents[1] / "results" / "bench" / (
        "gpu" if torch.cuda.is_available() else "cpu"
    )
    scale = QUICK if args.quick else FULL
    # CPU sections compare CPU loops; the gpu section picks its own accelerator.
    base = [*args.overrides, "trainer.accelerator=cpu"]
    results: dict = {
        "command": shlex.join(["python", "-m", "benchmarks", *argv]),
        "machine": machine_info(),
        "scale": scale.name,
        "sections": {},
    }
    with tempfile.TemporaryDirectory(prefix="cifar10-lab-bench-") as scratch:
        bench = Bench(base, scale, Path(scratch), args.target)
        results["machine"]["torch_threads"] = bench.threads
        for name in sections:
            start = time.perf_counter()
            log.info("section %s", name)
            results["sections"][name] = getattr(bench, name)()
            results["sections"][name]["section_s"] = round(time.perf_counter() - start, 1)
            results["targets"] = targets(results["sections"])
            results["machine"]["load_average_at_end"] = list(os.getloadavg())
            write_json(out.with_suffix(".json"), results)
    table = markdown(results)
    out.with_suffix(".md").write_text(table)
    print(table, end="")
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    return run_tool(lambda: run(args, argv) and None)


if __name__ == "__main__":
    sys.exit(main())
