"""Our numbers beside the published ones, from the recorded runs alone: the reproduction table
with a verdict per published figure, its headline for the front page, and the per-class table.
A row without recorded runs shows no number of ours, ever."""

from __future__ import annotations

import statistics
from collections.abc import Callable

from src.studies.rows import CLASSES, ROWS, Row

NO_PER_CLASS = "no run with per-class accuracies recorded yet"
# A published figure counts as reproduced when it lies within our mean ± 2 sd, or within this
# many points of our mean where 2 sd is narrower (a few seeds can agree by chance).
MIN_BAND = 1.5


def runs_of(row: Row, results: list[dict], kind: str = "run") -> list[dict]:
    runs = [r for r in results if r["row"] == row.key and r["kind"] == kind]
    return sorted(runs, key=lambda r: r["seed"])


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values)


def verdict(published: float, accs: list[float]) -> str:
    """'reproduced', or 'differs by X' (our mean minus the published figure)."""
    if len(accs) < 2:
        return "one seed: no verdict yet"
    mean, sd = mean_sd(accs)
    gap = mean - published
    return "reproduced" if abs(gap) <= max(2 * sd, MIN_BAND) else f"differs by {gap:+.2f}"


def verdicts(row: Row, accs: list[float]) -> list[tuple[str, float, str]]:
    """(who published it, the figure, its verdict) for each published figure of the row."""
    return [(who, value, verdict(value, accs)) for who, value in row.published]


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def ours(accs: list[float]) -> str:
    listed = ", ".join(f"{a:.2f}" for a in accs)
    if len(accs) == 1:
        return f"{accs[0]:.2f} (1 seed)"
    mean, sd = mean_sd(accs)
    return f"**{mean:.2f} ± {sd:.2f}** ({len(accs)} seeds: {listed})"


def published_cell(row: Row) -> str:
    return "; ".join(f"{value:g} ({who})" for who, value in row.published)


def verdict_cell(row: Row, accs: list[float], notes: list[str]) -> str:
    """Each published figure's verdict; a difference points at the row's note, or says that
    nothing explains it yet."""
    cells = []
    for who, _, said in verdicts(row, accs):
        if said.startswith("differs"):
            if row.note:
                if row.note not in notes:
                    notes.append(row.note)
                said += f" (note {notes.index(row.note) + 1})"
            else:
                said += ": not explained yet"
        cells.append(f"{who}: {said}" if len(row.published) > 1 else said)
    return "; ".join(cells)


def table(results: list[dict], estimate: Callable[[Row, dict], str]) -> str:
    """The Markdown table, one line per row, then the notes its verdicts point at. `estimate`
    turns a row's timing probe into the text for a row not run yet."""
    lines = [
        "| experiment | study | published % | ours: test % (mean ± sd over seeds) | verdict "
        "| data | hardware | wall time per seed | command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for row in ROWS:
        runs, probes = runs_of(row, results), runs_of(row, results, "probe")
        if runs:
            accs = [r["test_acc"] for r in runs]
            cells = [
                ours(accs),
                verdict_cell(row, accs, notes),
                "; ".join(sorted({r["data"] for r in runs})),
                "; ".join(sorted({r["hardware"] for r in runs})),
                wall_time_per_seed(runs),
            ]
        elif probes:
            cells = [estimate(row, probes[-1]), "-", "-", probes[-1]["hardware"], "-"]
        else:
            cells = ["not yet run here (not timed yet: run `make reproduce`)", "-", "-", "-", "-"]
        command = f"`python -m src.train {row.key}`"
        first = [f"`{row.experiment}`", row.study, published_cell(row)]
        lines.append("| " + " | ".join([*first, *cells, command]) + " |")
    lines += [""] + [f"{i}. {note}." for i, note in enumerate(notes, 1)] if notes else []
    return "\n".join(lines)


def wall_time_per_seed(runs: list[dict]) -> str:
    """Mean wall time of a run; a run trained in a fused group of K counts a K-th of its own
    wall time (the group trained its K seeds at once; members are tested one after another, so
    this is a little under a K-th of the group's time)."""
    per_seed = statistics.mean(r["wall_time_s"] / r.get("fused_members", 1) for r in runs)
    fused = [r["fused_members"] for r in runs if "fused_members" in r]
    if not fused:
        return duration(per_seed)
    sizes = " and ".join(map(str, sorted(set(fused))))
    which = "seeds" if len(fused) == len(runs) else f"{len(fused)} of the {len(runs)} seeds"
    return f"{duration(per_seed)} ({which} trained as fused groups of {sizes})"


def headline(results: list[dict]) -> str:
    """The front page's summary: how many published figures we measured, and how many hold."""
    measured, held, differ = 0, 0, []
    for row in ROWS:
        accs = [r["test_acc"] for r in runs_of(row, results)]
        for who, _, said in verdicts(row, accs) if len(accs) > 1 else ():
            measured += 1
            if said == "reproduced":
                held += 1
            else:
                differ.append(f"{row.study}, {who}: {said.removeprefix('differs by ')}")
    total = sum(len(row.published) for row in ROWS)
    text = (
        f"Of the studies' {total} published figures, {measured} have been rerun here over several "
        f"seeds, and {held} of those are reproduced (within our mean ± 2 sd, or {MIN_BAND} points)."
    )
    if differ:
        text += " These differ (our mean minus theirs; the table says why):\n\n"
        text += "\n".join(f"- {line}" for line in differ)
    return text


def per_class_table(results: list[dict]) -> str:
    """Per class, ours (mean ± sd over seeds) beside the study's, for every study that
    published per-class accuracies; rows not run yet say so and show nothing of ours."""
    rows = [row for row in ROWS if row.per_class]
    head = ["class"]
    for row in rows:
        head += [f"{row.experiment}: published", f"{row.experiment}: ours"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ours_by_row = {row.key: per_class_runs(row, results) for row in rows}
    for i, name in enumerate(CLASSES):
        cells = [name]
        for row in rows:
            runs = ours_by_row[row.key]
            if not runs:
                mine = NO_PER_CLASS
            elif len(runs) == 1:
                mine = f"{runs[0][i]:.1f} (1 seed)"
            else:
                mean, sd = mean_sd([run[i] for run in runs])
                mine = f"{mean:.1f} ± {sd:.1f}"
            cells += [f"{row.per_class[i]:.1f}", mine]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_class_runs(row: Row, results: list[dict]) -> list[list[float]]:
    """Each recorded run's per-class test accuracies (CLASSES order); runs recorded without
    them are left out."""
    return [
        [r["per_class"][name] for name in CLASSES]
        for r in runs_of(row, results)
        if r.get("per_class")
    ]
