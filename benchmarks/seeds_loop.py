"""A study's own loop, recipe and data pipeline on the same data, over several seeds.

    python -m benchmarks.seeds_loop data.source=folder \
        data.root=$HOME/.cache/cifar10-lab/cifar10-jpeg --seeds 0 1 2
    python -m benchmarks.seeds_loop experiment=seed000_width model.n=90 data.source=folder \
        data.root=$HOME/.cache/cifar10-lab/cifar10-jpeg --seeds 0 1 2

The yardstick for the reproduction table (docs/reproducing.md): the published figures were
measured on the official test set, while this copy is JPEG with 5,000 test images. Running the
seeds' own code here tells the copy's drift apart from any difference of cifar10-lab's. Each
seed trains with the tutorial's loop (torchvision image data set, 2 DataLoader workers, batch 4,
SGD with momentum 0.9) the network, learning rate and epochs of the experiment given (default:
the tutorial net, lr 0.001, 2 epochs; seed 000's width study is the same loop), and is tested on
the whole test split after each epoch. Writes results/bench/seeds_loop.json (kept: resume by
running again; runs are told apart by their model and recipe overrides).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path

from omegaconf import DictConfig

from benchmarks.accuracy import seeds_time_to_accuracy
from benchmarks.common import compose_train
from src.cli import ToolParser, run_tool
from src.errors import ConfigError
from src.files import write_json

log = logging.getLogger("seeds_loop")

RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench" / "seeds_loop.json"
TUTORIAL = "experiment=seed000_tutorial"


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


def check_loop_runs(cfg: DictConfig) -> None:
    """The loop runs the seeds' recipe (batch 4, SGD with momentum 0.9 and nothing else, no
    schedule, no augmentation): refuse a recipe it would not run as configured."""
    differs = {
        "data.batch_size=4": cfg.data.batch_size == 4,
        "optimizer=sgd": cfg.optimizer._target_ == "torch.optim.SGD",
        "optimizer.momentum=0.9": cfg.optimizer.get("momentum") == 0.9,
        "optimizer.weight_decay=0": not cfg.optimizer.get("weight_decay"),
        "optimizer.nesterov=false": not cfg.optimizer.get("nesterov"),
        "scheduler=none": not cfg.get("scheduler"),
        "data.augment=none": cfg.data.augment in (None, "none"),
        "model.label_smoothing=0": not cfg.model.get("label_smoothing"),
    }
    wrong = [setting for setting, holds in differs.items() if not holds]
    if wrong:
        raise ConfigError(
            f"the tutorial's loop runs the seeds' recipe only; this one needs {', '.join(wrong)}"
        )


def seeds_loop(args: argparse.Namespace) -> int:
    runs = json.loads(args.out.read_text())["runs"] if args.out.exists() else []
    for run in runs:  # records from before other studies ran were the tutorial's
        run.setdefault("study", TUTORIAL)
    recipe = [o for o in args.overrides if not o.startswith(("data.", "threads="))]
    if not any(o.startswith("experiment=") for o in recipe):
        recipe = [TUTORIAL, *recipe]
    overrides = [*recipe, *(o for o in args.overrides if o not in recipe)]
    study = " ".join(recipe)
    with tempfile.TemporaryDirectory() as scratch:
        cfg = compose_train(overrides, Path(scratch))
    check_loop_runs(cfg)
    epochs, lr = int(cfg.trainer.max_epochs), float(cfg.optimizer.lr)
    for seed in args.seeds:
        if any(r["seed"] == seed and r["study"] == study for r in runs):
            continue
        log.info("seed %d: %d epochs of the tutorial's loop, %s", seed, epochs, study)
        with tempfile.TemporaryDirectory() as scratch:
            # A target above 100% is never reached: the loop runs its epochs, tested after each.
            result = seeds_time_to_accuracy(
                overrides, 101.0, 1.0, epochs, Path(scratch), seed=seed, lr=lr
            )
        runs.append(
            {
                "study": study,
                "seed": seed,
                "test_acc_per_epoch": [point[1] for point in result["curve"]],
                "train_s": result["curve"][-1][0],
                "recipe": result["recipe"],
                "data": " ".join(o for o in overrides if o not in recipe),
            }
        )
        write_json(args.out, {"runs": sorted(runs, key=lambda r: (r["study"], r["seed"]))})
    final = [
        r["test_acc_per_epoch"][-1] for r in runs if r["study"] == study and r["seed"] in args.seeds
    ]
    spread = f" ± {statistics.stdev(final):.2f}" if len(final) > 1 else ""
    seeds = f"{len(final)} seed{'s' * (len(final) > 1)}"
    print(
        f"the tutorial's loop, {study}, {epochs} epochs, {seeds}: "
        f"{statistics.mean(final):.2f}{spread} % test ({', '.join(f'{a:.2f}' for a in final)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
