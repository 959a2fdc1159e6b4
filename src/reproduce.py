"""Reproduce the seed studies: run the affordable recipes, time the others, rewrite the record.

    python -m src.reproduce [options] [Hydra overrides for every run]
    python -m src.reproduce data.source=folder data.root=$HOME/.cache/cifar10-lab/cifar10-jpeg
    make reproduce

Every run is `python -m src.train experiment=<name> seed=<seed>`, made in a child process started
only while this process holds an exclusive lock on a file (`--lock`): on a shared machine, jobs
that take the same lock take turns with ours. A row's missing seeds train in one child, as one
sweep (`-m seed=1,2`) whose jobs the launcher trains as a fused group (docs/fused.md); a lone seed
trains alone. Finished runs go into
results/reproduce.json (run again to resume: recorded runs are not repeated, and a run that was
stopped continues from its last checkpoint). The rows are the studies' published figures
(src/studies/rows.py). From that file alone the tool rebuilds docs/reproducing.md's table (with a
verdict per published figure) and per-class table, the front page's headline and the figures
(docs/reproduce_*.png), so every number there was measured by a run listed in it. Experiments too
long for the machine get a short timing probe instead and an estimate of the time they need.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import logging
import math
import platform
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig

from src.cli import ToolParser, run_tool
from src.errors import ConfigError
from src.files import write_json
from src.resolvers import register_resolvers
from src.studies import figures, tables
from src.studies.rows import ROWS, Row
from src.threads import available_cores

log = logging.getLogger("reproduce")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "reproduce.json"
DOC = ROOT / "docs" / "reproducing.md"
README = ROOT / "README.md"
RUNS = ROOT / "outputs" / "reproduce"
START, END = "<!-- reproduce:start -->", "<!-- reproduce:end -->"
PER_CLASS = ("<!-- per-class:start -->", "<!-- per-class:end -->")
HEADLINE = ("<!-- headline:start -->", "<!-- headline:end -->")
DEFAULT_LOCK = "/tmp/cifar10-lab-cpu.lock"
TRAIN_IMAGES = 50_000  # CIFAR-10's training split (the official files and the JPEG copy alike)
PROBE_BATCHES = 256  # timed batches (optimizer steps) of a probe


# -- what a run is, and where its numbers go ---------------------------------------------------


def recipe(row: Row, overrides: list[str]) -> DictConfig:
    """The composed config of a row, as `python -m src.train` would build it."""
    register_resolvers()
    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose(
                "train", overrides=[f"experiment={row.experiment}", *row.overrides, *overrides]
            )
    except HydraException as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"cannot compose {row.key} {' '.join(overrides)}: {first}") from err


def describe_data(cfg: DictConfig) -> str:
    if cfg.data.source != "folder":
        return "official CIFAR-10 files (10,000 test images)"
    test = Path(cfg.data.root).expanduser() / "test"
    n_test = sum(1 for p in test.rglob("*") if p.is_file()) if test.is_dir() else 0
    name = "JPEG copy (../shared/data)" if "cifar10-jpeg" in str(cfg.data.root) else "image folder"
    return f"{name}, {n_test:,} test images"


def describe_hardware(cfg: DictConfig) -> str:
    if torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda"):
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    cores = available_cores()
    if cfg.threads and cfg.threads < cores:
        return f"{cfg.threads} of {cores} cores ({cpu}), no GPU"
    return f"{cores}-core CPU ({cpu}), no GPU"


def train_args(row: Row, seeds: list[int], probe: bool = False) -> list[str]:
    """The overrides of the row's runs with these seeds (without the user's data overrides); a
    timing probe of PROBE_BATCHES training batches if `probe`."""
    args = [f"experiment={row.experiment}", *row.overrides, f"seed={','.join(map(str, seeds))}"]
    if probe:  # skip validation and most of the test
        args += [
            "trainer.max_epochs=1",
            f"++trainer.limit_train_batches={PROBE_BATCHES}",
            "++trainer.limit_test_batches=1",
            "data.val_size=0",
            "data.val_from=train",
        ]
    return args


def estimate_s(row: Row, probe: dict, cfg: DictConfig) -> float:
    """Training time of the full recipe, from the probe's measured time per batch."""
    val = cfg.data.val_size if cfg.data.val_from == "train" else 0
    n_val = round(val * TRAIN_IMAGES) if 0 < val < 1 else int(val)
    batches = math.ceil((TRAIN_IMAGES - n_val) / cfg.data.batch_size)
    return probe["epoch_time_s"] / probe["probe_batches"] * batches * cfg.trainer.max_epochs


@contextmanager
def exclusive(lock: str | None) -> Iterator[None]:
    """Hold an flock(2) lock, as `flock FILE command` does (filelock may delete its file, which
    would split the queue of processes waiting on it)."""
    if not lock:
        yield
        return
    with open(lock, "a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def continues(run_dir: Path, rerun: bool) -> bool:
    """Whether a run's folder is kept for it to go on from its last checkpoint: a stopped run's
    (running when it was killed, or interrupted) is, and without --rerun so is any other (a
    finished one whose record was lost is recorded from its folder, or tested again); --rerun
    starts the others from scratch."""
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        return False
    try:
        status = json.loads((run_dir / "metrics.json").read_text()).get("status")
    except (OSError, ValueError):
        status = None  # no record, or a half-written one: the run was stopped
    return not rerun or status in (None, "running", "interrupted")


def run_row(
    row: Row,
    seeds: list[int],
    overrides: list[str],
    lock: str | None,
    rerun: bool = False,
    probe: bool = False,
) -> tuple[list[dict], list[str]]:
    """Train `seeds` of one row (or its timing probe) in a child process under the lock; returns
    the finished runs' records and one error line per seed that did not finish.

    One seed trains alone (`python -m src.train`); several train as one sweep, which the
    launcher trains as fused groups (docs/fused.md): one on a CPU (one slot: the row takes its
    turn on the cores it is given), one per GPU on a machine with several. Each seed keeps its
    own folder and record. A run stopped earlier (killed, SIGTERM, Ctrl-C) continues from its
    last checkpoint."""
    folder = RUNS / row.slug
    run_dirs = {seed: folder / ("probe" if probe else f"seed{seed}") for seed in seeds}
    resume = {seed: not probe and continues(run_dir, rerun) for seed, run_dir in run_dirs.items()}
    for seed, run_dir in run_dirs.items():
        if not resume[seed]:
            shutil.rmtree(run_dir, ignore_errors=True)  # a rerun starts clean (no best-v1.ckpt)
    cfg = recipe(row, overrides)
    args = [*train_args(row, seeds, probe), *overrides, "trainer.enable_progress_bar=false"]
    if len(seeds) == 1:
        mode, where = [], [f"hydra.run.dir={run_dirs[seeds[0]]}"]
        where += ["resume=true"] if resume[seeds[0]] else []
    else:  # the launcher resumes the stopped ones itself (resume_key) and skips the finished
        mode = ["-m"]  # Hydra reads the flag before the overrides
        where = [
            f"hydra.sweep.dir={folder}",
            "hydra.sweep.subdir=seed${seed}",
            "hydra.launcher.cpu_jobs=1",
        ]
    command = ["-m", "src.train", *mode, *args, *where]
    with exclusive(lock):
        how = "resuming" if all(resume.values()) else "running"
        log.info("%s: %s", how, shlex.join(["python", *command]))
        done = subprocess.run([sys.executable, *command], cwd=ROOT, check=False)
    records, errors = [], []
    for seed, run_dir in run_dirs.items():
        metrics_file = run_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        if metrics.get("status") != "finished":
            errors.append(f"{row.key} seed {seed} failed (exit {done.returncode}); see {run_dir}")
            continue
        record = {
            "row": row.key,
            "kind": "probe" if probe else "run",
            "seed": seed,
            "test_acc": None if probe else round(metrics["test/acc"], 2),
            "per_class": None if probe else metrics["test/acc_per_class"],
            "epochs": metrics["epochs"],
            "epoch_time_s": metrics["epoch_time_s"],
            "wall_time_s": metrics["wall_time_s"],
            "data": describe_data(cfg),
            "hardware": describe_hardware(cfg),
            "date": datetime.date.today().isoformat(),
            "command": shlex.join(
                ["python", "-m", "src.train", *train_args(row, [seed], probe), *overrides]
            ),
            "run_dir": str(run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir),
        }
        if metrics.get("fused_members", 1) > 1:  # its times are the whole group's
            record["fused_members"] = metrics["fused_members"]
        if probe:
            record["probe_batches"] = PROBE_BATCHES
        records.append(record)
    return records, errors


def estimate(row: Row, probe: dict, overrides: list[str]) -> str:
    """The table's text for a row that has only a timing probe."""
    cfg = recipe(row, overrides)
    per_batch = probe["epoch_time_s"] / probe["probe_batches"]
    return (
        f"not yet run here: about {tables.duration(estimate_s(row, probe, cfg))} per seed "
        f"({cfg.trainer.max_epochs} epochs at {per_batch * 1000:.0f} ms per batch of "
        f"{cfg.data.batch_size}, timed over {probe['probe_batches']} batches)"
    )


# -- the command line --------------------------------------------------------------------------


def write_between(markers: tuple[str, str], text: str, path: Path) -> None:
    """Replace what stands between the two marker lines of `path` with `text`."""
    start, end = markers
    content = path.read_text()
    if start not in content or end not in content:
        raise ConfigError(f"{path} has no '{start}' ... '{end}' markers to put the text between")
    head, rest = content.split(start, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def write_record(results: list[dict], overrides: list[str], doc: Path, readme: Path) -> str:
    """The table, the per-class table and the figures in `doc`'s folder, the headline in
    `readme`; returns the table."""
    text = tables.table(results, lambda row, probe: estimate(row, probe, overrides))
    write_between((START, END), text, doc)
    write_between(PER_CLASS, tables.per_class_table(results), doc)
    write_between(HEADLINE, tables.headline(results), readme)
    figures.draw_all(results, doc.parent)
    return text


def load_results(path: Path) -> list[dict]:
    return json.loads(path.read_text())["runs"] if path.exists() else []


def save_results(path: Path, results: list[dict]) -> None:
    order = {row.key: i for i, row in enumerate(ROWS)}
    results.sort(key=lambda r: (order.get(r["row"], len(order)), r["kind"], r["seed"]))
    write_json(path, {"runs": results})


def main(argv: list[str] | None = None) -> int:
    parser = ToolParser(
        "python -m src.reproduce",
        __doc__.split("\n")[0],
        overrides="train overrides for every run, e.g. data.root=PATH",
    )
    parser.add_argument("--only", nargs="+", metavar="EXPERIMENT", help="only these experiments")
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        metavar="SEED",
        help="only these of each row's seeds (e.g. --seeds 0: one run per row first)",
    )
    parser.add_argument("--table-only", action="store_true", help="rewrite the record, run nothing")
    parser.add_argument("--no-probes", action="store_true", help="skip the timing probes")
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="first add the runs recorded in these files (e.g. the GPU check's reproduce.json)",
    )
    parser.add_argument("--rerun", action="store_true", help="repeat runs already recorded")
    parser.add_argument(
        "--lock",
        default=DEFAULT_LOCK,
        help=f"lock file held during each run (default {DEFAULT_LOCK}; '' for none)",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="the runs' record, read and extended (JSON)"
    )
    parser.add_argument("--doc", type=Path, default=DOC, help="the page with the tables")
    parser.add_argument("--readme", type=Path, default=README, help="the page with the headline")
    args = parser.parse_args(argv)
    return run_tool(lambda: reproduce(args))


def reproduce(args: argparse.Namespace) -> int:
    known = {row.experiment for row in ROWS}
    unknown = set(args.only or ()) - known
    if unknown:
        raise ConfigError(f"unknown experiment(s) {sorted(unknown)}: choose from {sorted(known)}")
    results = load_results(args.out)
    if args.merge:
        merge(results, args.merge)
        save_results(args.out, results)
    failed = 0
    if not args.table_only:
        failed = run_all(args, results)
    text = write_record(results, args.overrides, args.doc, args.readme)
    print(text)
    log.info("record written to %s (%d recorded runs in %s)", args.doc, len(results), args.out)
    return 1 if failed else 0


def gpu_here(row: Row, overrides: list[str]) -> bool:
    """Whether the row's runs would train on a GPU (counted without initialising CUDA)."""
    accelerator = str(recipe(row, overrides).trainer.accelerator)
    return torch.cuda.device_count() > 0 and accelerator in ("auto", "gpu", "cuda")


def merge(results: list[dict], paths: list[Path]) -> None:
    """Add the runs recorded in other record files (a GPU machine's), replacing the same runs."""
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"cannot merge {path}: no such file")
        for record in load_results(path):
            put(results, record)


def put(results: list[dict], record: dict) -> None:
    """Add one run to the record, in place of an earlier record of the same run."""
    key = (record["row"], record["kind"], record["seed"])
    results[:] = [r for r in results if (r["row"], r["kind"], r["seed"]) != key]
    results.append(record)


def run_all(args: argparse.Namespace, results: list[dict]) -> int:
    """Make every missing run and probe; returns how many failed (the others still count).
    A row's missing seeds train together, as one fused group."""
    todo = []
    for row in ROWS:
        if args.only and row.experiment not in args.only:
            continue
        probe = row.gpu and not gpu_here(row, args.overrides)
        seeds = [seed for seed in row.seeds if args.seeds is None or seed in args.seeds]
        if probe:
            seeds = [] if args.no_probes else [0]
        kind = "probe" if probe else "run"
        recorded = {r["seed"] for r in results if r["row"] == row.key and r["kind"] == kind}
        missing = [seed for seed in seeds if args.rerun or seed not in recorded]
        if missing:
            todo.append((row, missing, probe))
    failed = 0
    for i, (row, seeds, probe) in enumerate(todo, 1):
        what = (
            "timing probe"
            if probe
            else f"seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}"
        )
        log.info("[%d/%d] %s, %s", i, len(todo), row.key, what)
        records, errors = run_row(row, seeds, args.overrides, args.lock, args.rerun, probe)
        for error in errors:
            log.error("%s", error)
        failed += len(errors)
        for record in records:
            put(results, record)
        if records:
            save_results(args.out, results)
    return failed


if __name__ == "__main__":
    sys.exit(main())
