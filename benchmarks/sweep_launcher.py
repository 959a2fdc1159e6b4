"""Wall time of one sweep, run several ways in one command on this machine.

    flock /tmp/cifar10-lab-cpu.lock python -m benchmarks.sweep_launcher --repeat=2 \
        data.source=folder data.root=$HOME/.cache/cifar10-lab/cifar10-jpeg
    flock /tmp/cifar10-lab-cpu.lock python -m benchmarks.sweep_launcher --fused --steps 1000 \
        data.source=folder data.root=$HOME/.cache/cifar10-lab/cifar10-jpeg

Default: a 4-job sweep (the tutorial net, one epoch, four learning rates) four ways: the
parallel launcher as it comes (the jobs differ only in learning rate, so it trains them as fused
groups, one per core), the parallel launcher unfused with its default slots (one job per core,
the cores split between them), the parallel launcher with one slot (one job at a time, every
core), and Hydra's basic launcher (one job at a time inside the launching process).

`--fused`: a 16-job sweep of the seeds' tutorial recipe (batch 4; 4 seeds x 4 learning rates,
`--steps` optimizer steps each, the test split at the end) with `hydra.launcher.fuse=off`
against `fuse=auto` (same-shape jobs trained as fused groups): jobs per hour, and each job's
milliseconds per optimizer step (a fused group's step time shared by its members).

`--repeat=N`: N rounds, the ways taking turns, medians shown. Other arguments are train
overrides. Writes everything measured to `--out` (JSON).
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from src.cli import ToolParser, run_tool
from src.files import write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "bench"
# Four jobs of equal cost: one epoch of the tutorial net at four learning rates.
LAUNCHER_SWEEP = ["optimizer.lr=0.01,0.02,0.05,0.1", "trainer.max_epochs=1"]
LAUNCHER_WAYS = {  # as a user gets it (fused groups), then unfused: the launcher itself
    "parallel launcher, default settings (fused)": [],
    "parallel launcher, default slots": ["hydra.launcher.fuse=off"],
    "parallel launcher, one job at a time": [
        "hydra.launcher.cpu_jobs=1",
        "hydra.launcher.fuse=off",
    ],
    "basic launcher (Hydra's), one job at a time": ["hydra/launcher=basic"],
}
FUSED_SWEEP = [
    "experiment=seed000_tutorial",
    "seed=0,1,2,3",
    "optimizer.lr=0.0005,0.001,0.002,0.004",
    "trainer.max_epochs=1",
]
FUSED_WAYS = {
    "every job alone (fuse=off)": ["hydra.launcher.fuse=off"],
    "fused groups (fuse=auto)": ["hydra.launcher.fuse=auto"],
}


def run_sweep(sweep: list[str], extra: list[str], overrides: list[str], sweep_dir: Path) -> dict:
    command = [
        sys.executable,
        "-m",
        "src.train",
        "-m",
        *sweep,
        "trainer.accelerator=cpu",
        *overrides,
        *extra,
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"sweep failed ({' '.join(command)}):\n{result.stderr[-3000:]}")
    jobs = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))]
    return {"wall_s": round(wall, 1), "jobs": jobs}


def step_ms(job: dict, steps: int) -> float:
    """A job's share of its optimizer steps' time: a fused group's members share each step."""
    return job["epoch_time_s"] / steps / job.get("fused_members", 1) * 1e3


def measure(args) -> int:
    sweep, ways = (FUSED_SWEEP, FUSED_WAYS) if args.fused else (LAUNCHER_SWEEP, LAUNCHER_WAYS)
    if args.fused:
        sweep = [*sweep, f"trainer.limit_train_batches={args.steps}"]
    results: dict[str, list[dict]] = {way: [] for way in ways}
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        # Rounds alternate the ways, so a busy spell on a shared machine hits all of them.
        for round_ in range(args.repeat):
            for i, (way, extra) in enumerate(ways.items()):
                run = run_sweep(sweep, extra, args.overrides, Path(tmp) / f"{round_}-{i}")
                jobs = run.pop("jobs")
                run["n_jobs"] = len(jobs)
                run["jobs_per_hour"] = round(len(jobs) / run["wall_s"] * 3600)
                run["test_acc"] = [j["test/acc"] for j in jobs]
                run["fused_members"] = [j.get("fused_members", 1) for j in jobs]
                if args.fused:
                    run["ms_per_step_per_job"] = [round(step_ms(j, args.steps), 3) for j in jobs]
                results[way].append(run)
                print(f"round {round_ + 1}, {way}: {run['wall_s']} s", flush=True)
    median = {way: statistics.median(r["wall_s"] for r in runs) for way, runs in results.items()}
    base_way = next(iter(ways)) if args.fused else list(ways)[-1]
    base = median[base_way]
    n_jobs = results[base_way][0]["n_jobs"]
    print(f"\n| {n_jobs}-job sweep | wall time (median of {args.repeat}) | jobs per hour | "
          f"against {base_way} |\n|---|---|---|---|")  # fmt: skip
    for way, wall in median.items():
        per_step = ""
        if args.fused:
            ms = [m for r in results[way] for m in r["ms_per_step_per_job"]]
            per_step = f" ({statistics.median(ms):.2f} ms per step per job)"
        print(
            f"| {way}{per_step} | {wall:.1f} s | {n_jobs / wall * 3600:.0f} | {base / wall:.2f}x |"
        )
    write_json(
        args.out,
        {
            "sweep": sweep,
            "overrides": args.overrides,
            "repeat": args.repeat,
            "machine": platform.processor() or platform.machine(),
            "median_wall_s": median,
            "speedup_against": base_way,
            "speedup": {way: round(base / wall, 3) for way, wall in median.items()},
            "rounds": results,
        },
    )
    print(f"written to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = ToolParser(
        "python -m benchmarks.sweep_launcher",
        __doc__.split("\n")[0],
        overrides="train overrides for every job, e.g. data.root=PATH",
    )
    parser.add_argument("--fused", action="store_true", help="fused groups against fuse=off")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps per fused job")
    parser.add_argument("--repeat", type=int, default=1, help="rounds (the medians are shown)")
    parser.add_argument("--out", type=Path, help="where to write (JSON)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = RESULTS / ("fused_sweep.json" if args.fused else "sweep_launcher.json")
    return run_tool(lambda: measure(args))


if __name__ == "__main__":
    sys.exit(main())
