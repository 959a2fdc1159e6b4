"""Wall time of one 4-job sweep: the parallel launcher against the same jobs one at a time.

    flock /tmp/cifar10-lab-cpu.lock python -m benchmarks.sweep_launcher --repeat=2 \
        data.source=folder data.root=$HOME/.cache/cifar10-lab/cifar10-jpeg

Runs, in this one command and on this machine, the same sweep three ways: the parallel launcher
with its default slots (one job per core, the cores split between them), the parallel launcher
with one slot (one job at a time, every core, still a fresh process per job), and Hydra's basic
launcher (one job at a time inside the launching process). `--repeat=N`: N rounds, medians.
Other arguments are train overrides.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from src.cli import ToolParser

ROOT = Path(__file__).resolve().parents[1]
# Four jobs of equal cost: one epoch of the tutorial net at four learning rates.
SWEEP = ["optimizer.lr=0.01,0.02,0.05,0.1", "trainer.max_epochs=1", "trainer.accelerator=cpu"]
WAYS = {
    "parallel launcher, default slots": [],
    "parallel launcher, one job at a time": ["hydra.launcher.cpu_jobs=1"],
    "basic launcher (Hydra's), one job at a time": ["hydra/launcher=basic"],
}


def run_sweep(extra: list[str], overrides: list[str], sweep_dir: Path) -> dict:
    command = [
        sys.executable,
        "-m",
        "src.train",
        "-m",
        *SWEEP,
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
    accs = [json.loads(p.read_text())["test/acc"] for p in sorted(sweep_dir.glob("*/metrics.json"))]
    return {"wall_s": round(wall, 1), "jobs": len(accs), "test_acc": accs}


def main(argv: list[str] | None = None) -> int:
    parser = ToolParser(
        "python -m benchmarks.sweep_launcher",
        __doc__.split("\n")[0],
        overrides="train overrides for every job, e.g. data.root=PATH",
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds (the medians are shown)")
    args = parser.parse_args(argv)
    repeats, argv = args.repeat, args.overrides
    results: dict[str, list[dict]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        # Rounds alternate the ways, so a busy spell on a shared machine hits all of them.
        for round_ in range(repeats):
            for i, (way, extra) in enumerate(WAYS.items()):
                run = run_sweep(extra, argv, Path(tmp) / f"{round_}-{i}")
                results[way].append(run)
                print(f"round {round_ + 1}, {way}: {run['wall_s']} s", flush=True)
    median = {way: statistics.median(r["wall_s"] for r in runs) for way, runs in results.items()}
    base = median["basic launcher (Hydra's), one job at a time"]
    print(f"\n| 4-job sweep | wall time (median of {repeats}) | speed-up |\n|---|---|---|")
    for way, wall in median.items():
        print(f"| {way} | {wall:.1f} s | {base / wall:.2f}x |")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
