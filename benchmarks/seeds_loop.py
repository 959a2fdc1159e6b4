"""The tutorial's own loop, recipe and data pipeline on the same data, over several seeds.

    python -m benchmarks.seeds_loop data.source=folder \
        data.root=$HOME/.cache/cifar10-lab/cifar10-jpeg --seeds 0 1 2

The yardstick for the reproduction table's tutorial row (docs/reproducing.md):
the published 53% was measured on the official test set, while this copy is JPEG with 5,000
test images. Running the seeds' own code here tells the copy's drift apart from any difference
of cifar10-lab's. Each seed trains the tutorial net for 2 epochs at batch 4 (SGD 0.001, momentum
0.9; torchvision image data set, 2 DataLoader workers) and is tested on the whole test split
after each epoch. Writes results/bench/seeds_loop.json (kept: resume by running again).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.accuracy import seeds_time_to_accuracy
from src.cli import ToolParser, run_tool
from src.files import write_json

log = logging.getLogger("seeds_loop")

RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench" / "seeds_loop.json"
EPOCHS = 2


def main(argv: list[str] | None = None) -> int:
    parser = ToolParser(
        "python -m benchmarks.seeds_loop",
        __doc__.split("\n")[0],
        overrides="train overrides, e.g. data.root=PATH",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="the seeds' record, read and extended (JSON)"
    )
    args = parser.parse_args(argv)
    return run_tool(lambda: seeds_loop(args))


def seeds_loop(args: argparse.Namespace) -> int:
    runs = json.loads(args.out.read_text())["runs"] if args.out.exists() else []
    for seed in args.seeds:
        if any(r["seed"] == seed for r in runs):
            continue
        log.info("seed %d: %d epochs of the tutorial's loop", seed, EPOCHS)
        with tempfile.TemporaryDirectory() as scratch:
            # A target above 100% is never reached: the loop runs its epochs, tested after each.
            result = seeds_time_to_accuracy(
                args.overrides, 101.0, 1.0, EPOCHS, Path(scratch), seed=seed
            )
        runs.append(
            {
                "seed": seed,
                "test_acc_per_epoch": [point[1] for point in result["curve"]],
                "train_s": result["curve"][-1][0],
                "recipe": result["recipe"],
                "data": " ".join(args.overrides),
            }
        )
        write_json(args.out, {"runs": sorted(runs, key=lambda r: r["seed"])})
    final = [r["test_acc_per_epoch"][-1] for r in sorted(runs, key=lambda r: r["seed"])]
    spread = f" ± {statistics.stdev(final):.2f}" if len(final) > 1 else ""
    print(
        f"the tutorial's loop, {EPOCHS} epochs, {len(final)} seed{'s' * (len(final) > 1)}: "
        f"{statistics.mean(final):.2f}{spread} % test ({', '.join(f'{a:.2f}' for a in final)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
