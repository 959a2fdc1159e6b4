"""Sweep report: every job's result, mean and spread over repeated seeds, and plots.

python -m src.report [SWEEP_FOLDER] [--out FOLDER]     (default: the latest sweep)

Reads only what each job leaves in its own folder (metrics.json and .hydra/overrides.yaml), so
it works on a sweep that is still running or was stopped halfway: a job without metrics.json, or
still marked "running", is shown as unfinished. Writes to SWEEP_FOLDER/report/: jobs.csv,
seeds.csv (when seeds repeat), report.md and PNG plots.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from hydra_plugins.cifar10_lab_sweeper.optuna_sweeper import TRIAL_KEY
from src.cli import ToolParser, run_tool
from src.errors import DataError
from src.overrides import read_job_overrides
from src.plots import save_png

log = logging.getLogger(__name__)

SWEEPS = Path("outputs/sweeps")
REPEAT_KEY = "seed"  # jobs that differ only in this are repeats of one setting
STATUSES = ("finished", "failed", "diverged", "pruned")
METRICS = ("val/acc_best", "test/acc", "test/loss", "params", "wall_time_s")
TITLES = {
    "val/acc_best": "best val acc (%)",
    "test/acc": "test acc (%)",
    "test/loss": "test loss",
    "params": "params",
    "wall_time_s": "wall time (s)",
}
BEST_RUNS = 3  # runs in the per-class plot, chosen by best validation (else test) accuracy


@dataclass
class Job:
    name: str  # its folder, relative to the sweep folder
    overrides: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def status(self) -> str:
        status = self.metrics.get("status")
        return status if status in STATUSES else "unfinished"

    @property
    def finished(self) -> bool:
        return self.status == "finished"


def latest_sweep(root: Path = SWEEPS) -> Path:
    """The most recently changed sweep folder, root/<date>/<time>_*."""
    sweeps = [path for path in root.glob("*/*") if path.is_dir()]
    if not sweeps:
        raise DataError(
            f"no sweep folder in {root}/: run a sweep (python -m src.train -m ...) or pass its "
            "folder: python -m src.report outputs/sweeps/<date>/<time>"
        )
    return max(sweeps, key=lambda path: path.stat().st_mtime)


def read_jobs(sweep: Path) -> list[Job]:
    """Every job folder under `sweep`: one that holds metrics.json or .hydra/overrides.yaml."""
    if not sweep.is_dir():
        raise DataError(f"sweep folder {sweep} does not exist: pass the folder of a sweep")
    folders = {path.parent for path in sweep.rglob("metrics.json")}
    folders |= {path.parent.parent for path in sweep.rglob(".hydra/overrides.yaml")}
    jobs = []
    for folder in sorted(folders):
        try:
            metrics = json.loads((folder / "metrics.json").read_text())
        except FileNotFoundError:
            metrics = {}
        except (OSError, json.JSONDecodeError) as err:
            log.warning("%s/metrics.json is unreadable (%s): shown as unfinished", folder, err)
            metrics = {}
        name = str(folder.relative_to(sweep)) if folder != sweep else folder.name
        jobs.append(Job(name, read_job_overrides(folder), metrics))
    if not jobs:
        raise DataError(
            f"no jobs in {sweep}: a job folder holds metrics.json or .hydra/overrides.yaml; "
            "pass the folder of a sweep (outputs/sweeps/<date>/<time>)"
        )
    return jobs


def swept_keys(jobs: Sequence[Job]) -> list[str]:
    """Override keys whose value is not the same in every job, in command-line order."""
    # An Optuna search's trial number is no setting of the run.
    keys = [k for k in dict.fromkeys(k for job in jobs for k in job.overrides) if k != TRIAL_KEY]
    return [key for key in keys if len({repr(job.overrides.get(key)) for job in jobs}) > 1]


def _sort_key(value: Any) -> tuple:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, "" if value is None else str(value))


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def seed_groups(jobs: Sequence[Job], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Finished jobs grouped by their swept values other than the seed: count, mean and std."""
    settings = [key for key in keys if key != REPEAT_KEY]
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        if job.finished:
            groups.setdefault(tuple(job.overrides.get(k) for k in settings), []).append(job)
    rows = []
    for values, members in sorted(groups.items(), key=lambda g: [_sort_key(v) for v in g[0]]):
        row: dict[str, Any] = dict(zip(settings, values, strict=True))
        row["seeds"] = len(members)
        for metric in ("val/acc_best", "test/acc", "wall_time_s"):
            found = [job.metrics[metric] for job in members if job.metrics.get(metric) is not None]
            row[metric] = _mean_std(found) if found else None
        row["params"] = members[0].metrics.get("params")
        rows.append(row)
    return rows


# -- tables --------------------------------------------------------------------------------


FORMATS = {
    "val/acc_best": "{:.2f}",
    "test/acc": "{:.2f}",
    "test/loss": "{:.4f}",
    "params": "{:,}",
    "wall_time_s": "{:.1f}",
}


def _cell(value: Any, metric: str = "") -> str:
    """A value as a table cell; a (mean, std) pair as "mean ± std"."""
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return " ± ".join(_cell(part, metric) for part in value)
    if metric in FORMATS:
        return FORMATS[metric].format(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _one_line(error: str | None) -> str:
    return " ".join(error.split()) if error else "no error recorded"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    escape = [[str(cell).replace("|", "\\|") for cell in row] for row in [header, *rows]]
    lines = ["| " + " | ".join(row) + " |" for row in escape]
    lines.insert(1, "|" + "|".join("---" for _ in header) + "|")
    return "\n".join(lines)


def write_csvs(out: Path, jobs: Sequence[Job], keys: Sequence[str], groups: list[dict]) -> None:
    with open(out / "jobs.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["job", *keys, "status", *METRICS, "error"])
        for job in jobs:
            metrics = [job.metrics.get(metric) for metric in METRICS]
            writer.writerow(
                [job.name, *(job.overrides.get(k) for k in keys), job.status]
                + ["" if value is None else value for value in metrics]
                + [" ".join(job.metrics.get("error", "").split())]
            )
    if not any(group["seeds"] > 1 for group in groups):
        return
    settings = [key for key in keys if key != REPEAT_KEY]
    with open(out / "seeds.csv", "w", newline="") as file:
        writer = csv.writer(file)
        stats = ("val/acc_best", "test/acc", "wall_time_s")
        writer.writerow(
            [*settings, "seeds", *(f"{m} {s}" for m in stats for s in ("mean", "std")), "params"]
        )
        for group in groups:
            spread = [x for m in stats for x in (group[m] or ("", ""))]
            writer.writerow(
                [*(group[k] for k in settings), group["seeds"], *spread, group["params"]]
            )


def markdown_report(
    sweep: Path, jobs: Sequence[Job], keys: Sequence[str], groups: list[dict], plots: list[Path]
) -> str:
    counts = {
        status: sum(job.status == status for job in jobs) for status in (*STATUSES, "unfinished")
    }
    summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    parts = [
        f"# Sweep report: {sweep}",
        f"{len(jobs)} {'job' if len(jobs) == 1 else 'jobs'}: {summary}. "
        f"Swept: {', '.join(keys) or 'nothing'}. Accuracies in percent.",
        "## Jobs",
        markdown_table(
            ["job", *keys, "status", *(TITLES[m] for m in METRICS)],
            [
                [job.name, *(_cell(job.overrides.get(k)) for k in keys), job.status]
                + [_cell(job.metrics.get(m), m) for m in METRICS]
                for job in jobs
            ],
        ),
    ]
    if any(group["seeds"] > 1 for group in groups):
        settings = [key for key in keys if key != REPEAT_KEY]
        stats = ("val/acc_best", "test/acc", "wall_time_s")
        parts += [
            "## Mean ± standard deviation over seeds",
            markdown_table(
                [*settings, "seeds", *(TITLES[m] for m in stats)],
                [
                    [*(_cell(g[k]) for k in settings), str(g["seeds"])]
                    + [_cell(g[m], m) for m in stats]
                    for g in groups
                ],
            ),
        ]
    failed = [job for job in jobs if job.status in ("failed", "diverged")]
    if failed:
        parts.append("## Failed jobs")
        parts += [
            f"- `{job.name}` ({job.status}): {_one_line(job.metrics.get('error'))}"
            for job in failed
        ]
    if plots:
        parts.append("## Plots")
        parts += [f"![{plot.stem}]({plot.name})" for plot in plots]
    return "\n\n".join(parts) + "\n"


# -- plots ---------------------------------------------------------------------------------


def _label(job_or_group: Job | dict, keys: Sequence[str]) -> str:
    values = job_or_group.overrides if isinstance(job_or_group, Job) else job_or_group
    return ", ".join(f"{key}={_cell(values.get(key))}" for key in keys)


def is_rate(key: str) -> bool:
    """A learning rate (optimizer.lr, max_lr, ...): swept and read on a log scale."""
    name = key.rsplit(".", 1)[-1]
    return name in ("lr", "learning_rate") or name.endswith("_lr")


def plot_accuracy_against(key: str, groups: list[dict], keys: Sequence[str]) -> Figure:
    """Best validation and test accuracy against one swept parameter, one line per setting of
    the other swept parameters; error bars: standard deviation over seeds. Without validation
    (data.val_size=0, or runs stopped before it) only the test panel is drawn."""
    others = [k for k in keys if k not in (key, REPEAT_KEY)]
    values = sorted({g[key] for g in groups}, key=_sort_key)
    numeric = all(_sort_key(v)[0] == 0 for v in values)
    positions = {v: (v if numeric else i) for i, v in enumerate(values)}
    metrics = [m for m in ("val/acc_best", "test/acc") if any(g[m] is not None for g in groups)]
    metrics = metrics or ["test/acc"]
    figure = Figure(figsize=(5 * len(metrics), 4), layout="constrained")
    axes = figure.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    lines: dict[tuple, list[dict]] = {}
    for group in groups:
        lines.setdefault(tuple(group[k] for k in others), []).append(group)
    for axis, metric in zip(axes, metrics, strict=True):
        for setting, members in sorted(
            lines.items(), key=lambda item: [_sort_key(v) for v in item[0]]
        ):
            points = sorted(
                (g for g in members if g[metric] is not None), key=lambda g: _sort_key(g[key])
            )
            if not points:
                continue
            axis.errorbar(
                [positions[g[key]] for g in points],
                [g[metric][0] for g in points],
                yerr=[g[metric][1] for g in points],
                marker="o",
                capsize=3,
                label=_label(dict(zip(others, setting, strict=True)), others) or None,
            )
        axis.set_title(TITLES[metric])
        axis.set_xlabel(key)
        axis.grid(alpha=0.3)
        if numeric and min(values) > 0 and (is_rate(key) or max(values) / min(values) >= 20):
            axis.set_xscale("log")
            axis.minorticks_off()
        if (
            len(values) <= 12
        ):  # label each swept value; beyond that the axis's own ticks read better
            axis.set_xticks([positions[v] for v in values], [_cell(v) for v in values])
    axes[0].set_ylabel("accuracy (%)")
    if others:
        axes[-1].legend(fontsize=7)
    seeds = max(g["seeds"] for g in groups)
    figure.suptitle(
        f"accuracy against {key}" + (f" (mean ± std over up to {seeds} seeds)" if seeds > 1 else "")
    )
    return figure


def plot_per_class(best: Sequence[Job], keys: Sequence[str], by: str = "validation") -> Figure:
    """Per-class test accuracy of the best runs, chosen `by` validation (or test) accuracy."""
    classes = list(best[0].metrics["test/acc_per_class"])
    figure = Figure(figsize=(max(6, len(classes) * 0.9), 4), layout="constrained")
    axis = figure.add_subplot()
    width = 0.8 / len(best)
    for i, job in enumerate(best):
        per_class = job.metrics["test/acc_per_class"]
        axis.bar(
            [c + (i - (len(best) - 1) / 2) * width for c in range(len(classes))],
            [per_class.get(name, 0) for name in classes],
            width,
            label=f"{_label(job, keys) or job.name}: test {job.metrics['test/acc']:.2f}%",
        )
    axis.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    axis.set_ylabel("test accuracy (%)")
    axis.set_ylim(0, 100)
    axis.grid(axis="y", alpha=0.3)
    figure.legend(fontsize=7, loc="outside lower center")
    axis.set_title(f"per-class test accuracy of the {len(best)} best runs (by {by} accuracy)")
    return figure


def plot_time_against_accuracy(jobs: Sequence[Job], keys: Sequence[str]) -> Figure:
    """Each finished job as a point, coloured by its setting (its swept values but the seed)."""
    settings = [key for key in keys if key != REPEAT_KEY]
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axis = figure.add_subplot()
    by_setting: dict[str, list[Job]] = {}
    for job in jobs:
        by_setting.setdefault(_label(job, settings) or "all jobs", []).append(job)
    for label, members in by_setting.items():
        axis.scatter(
            [job.metrics["wall_time_s"] for job in members],
            [job.metrics["test/acc"] for job in members],
            label=label,
        )
    if 1 < len(by_setting) <= 12:
        figure.legend(fontsize=7, loc="outside right upper")
    axis.set_xlabel("wall time (s)")
    axis.set_ylabel("test accuracy (%)")
    axis.grid(alpha=0.3)
    axis.set_title("wall time against test accuracy")
    return figure


def best_runs(done: Sequence[Job]) -> tuple[list[Job], str]:
    """The BEST_RUNS finished jobs with per-class results, by best validation accuracy, and
    what they were chosen by: "validation", or "test" in a sweep without validation."""
    validated = any(job.metrics.get("val/acc_best") is not None for job in done)
    metric, by = ("val/acc_best", "validation") if validated else ("test/acc", "test")
    ranked = sorted(done, key=lambda job: -(job.metrics.get(metric) or -math.inf))
    return [job for job in ranked if job.metrics.get("test/acc_per_class")][:BEST_RUNS], by


def write_plots(
    out: Path, jobs: Sequence[Job], keys: Sequence[str], groups: list[dict]
) -> list[Path]:
    done = [job for job in jobs if job.finished and job.metrics.get("test/acc") is not None]
    if not done:
        log.warning("no finished job yet: no plots")
        return []
    plots = [
        save_png(plot_accuracy_against(key, groups, keys), out / f"acc_vs_{key}.png")
        for key in keys
        if key != REPEAT_KEY
    ]
    best, by = best_runs(done)
    if best:
        plots.append(save_png(plot_per_class(best, keys, by), out / "per_class_best.png"))
    timed = [job for job in done if job.metrics.get("wall_time_s") is not None]
    if timed:
        plots.append(save_png(plot_time_against_accuracy(timed, keys), out / "time_vs_acc.png"))
    return plots


# -- entry point ---------------------------------------------------------------------------


def make_report(sweep: Path, out: Path | None = None) -> dict[str, Any]:
    """Write the report of `sweep` (default folder: sweep/report); returns what it found."""
    jobs = read_jobs(sweep)
    keys = swept_keys(jobs)
    jobs.sort(key=lambda job: ([_sort_key(job.overrides.get(k)) for k in keys], job.name))
    groups = seed_groups(jobs, keys)
    out = out or sweep / "report"
    out.mkdir(parents=True, exist_ok=True)
    write_csvs(out, jobs, keys, groups)
    plots = write_plots(out, jobs, keys, groups)
    markdown = markdown_report(sweep, jobs, keys, groups, plots)
    (out / "report.md").write_text(markdown)
    print(markdown)
    log.info("report written to %s", out)
    return {"jobs": jobs, "swept": keys, "groups": groups, "plots": plots, "out": out}


def main(argv: Sequence[str] | None = None) -> int:
    parser = ToolParser("python -m src.report", __doc__.split("\n")[0])
    parser.add_argument("sweep", nargs="?", type=Path, help="sweep folder (default: the latest)")
    parser.add_argument("--out", type=Path, help="where to write (default: SWEEP/report)")
    args = parser.parse_args(argv)

    def work() -> None:
        make_report(args.sweep or latest_sweep(), args.out)

    return run_tool(work)


if __name__ == "__main__":
    sys.exit(main())
