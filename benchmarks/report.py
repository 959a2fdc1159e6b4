"""The targets (issue 7) checked against the results, and the Markdown table the README quotes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    text: str
    section: str
    value: Callable[[dict], float | None]  # from the section's results
    limit: float  # met when value <= limit


TARGETS = (
    Target(
        "time to target accuracy, cifar10-lab / seeds' loop",
        "time_to_accuracy",
        lambda s: s["ratio"],
        0.10,
    ),
    Target(
        "faithful seed recipe (batch 4), cifar10-lab / plain loop per batch",
        "per_batch",
        lambda s: 1 + s["batch 4"]["overhead"],
        1.15,
    ),
    Target(
        "Lightning overhead over the plain loop, batch 64",
        "per_batch",
        lambda s: s["batch 64"]["overhead"],
        0.10,
    ),
    Target(
        "Lightning overhead over the plain loop, batch 256",
        "per_batch",
        lambda s: s["batch 256"]["overhead"],
        0.10,
    ),
    Target(
        "tutorial net at batch 256, epoch time / matmul floor",
        "flops",
        lambda s: s["tutorial"]["times_floor"],
        3.0,
    ),
    Target(
        "sweep, parallel launcher (a job per core) / one job at a time",
        "sweep",
        lambda s: s["ratio"],
        0.75,
    ),
    # The same target against Hydra's basic launcher, which runs the jobs one at a time in its
    # own process (no start-up per job): the stricter baseline, reported beside the other.
    Target(
        "sweep, parallel launcher (a job per core) / Hydra's basic launcher",
        "sweep",
        lambda s: s["ratio_to_basic_launcher"],
        0.75,
    ),
    # Private copies would read 2.0 (one per job); shared pages read 1.0.
    Target(
        "parallel jobs, copies of the data set's pages held",
        "memory",
        lambda s: s["parallel"]["data_copies"],
        1.05,
    ),
)


def targets(sections: dict) -> list[dict]:
    """Each target whose section ran: its measured value, limit, and whether it is met."""
    rows = []
    for target in TARGETS:
        if target.section not in sections:
            continue
        value = target.value(sections[target.section])
        rows.append(
            {
                "target": target.text,
                "value": value,
                "limit": target.limit,
                "met": value is not None and value <= target.limit,
            }
        )
    return rows


def _ms(value: float) -> str:
    return f"{value:.2f} ms"


def _section_rows(name: str, s: dict) -> list[tuple[str, str]]:
    if name == "time_to_accuracy":
        rows = []
        for who, label in (("seeds_loop", "seeds' loop"), ("cifar10_lab", "cifar10-lab")):
            r = s[who]
            when = (
                f"{r['time_s']:.1f} s ({r['epochs']} epochs, {r['accuracy']}%)"
                if r["reached"]
                else f"not reached (best {r['accuracy']}% at {r['epochs']} epochs)"
            )
            rows.append((f"1. time to {s['target_acc']:g}%, {label}: {r['recipe']}", when))
        return rows
    if name == "per_batch":
        rows = []
        for batch, r in s.items():
            if not batch.startswith("batch"):
                continue
            if "seeds_loop_ms" in r:
                rows.append((f"2. {batch}: seeds' loop", _ms(r["seeds_loop_ms"])))
            rows.append(
                (
                    f"2-3. {batch}: plain loop",
                    f"{_ms(r['plain_ms'])} (CPU time, 1 thread: {_ms(r['plain_cpu_ms'])})",
                )
            )
            rows.append(
                (
                    f"2-3. {batch}: cifar10-lab",
                    f"{_ms(r['cifar10_lab_ms'])} ({r['overhead']:+.1%}) (CPU time, 1 thread: "
                    f"{_ms(r['cifar10_lab_cpu_ms'])}, {r['overhead_cpu']:+.1%})",
                )
            )
        return rows
    if name == "flops":
        rows = [("4. fp32 matmul peak", f"{s['matmul_peak_gflops']} GFLOP/s")]
        for net, label in (("tutorial", "tutorial net"), ("vgg6", "seed 002's VGG-like net")):
            r = s[net]
            rows.append(
                (
                    f"4. {label}, batch {r['batch']} ({r['mflop_per_image']} MFLOP/image)",
                    f"{r['gflops']} GFLOP/s; epoch {r['epoch_s']} s = {r['times_floor']}x "
                    f"the floor ({r['floor_epoch_s']} s)",
                )
            )
        return rows
    if name == "pipeline":
        rows = []
        for batch, presets in s.items():
            if not batch.startswith("batch"):
                continue
            for preset, r in presets.items():
                kornia = f"; kornia {r['kornia']:.0f}" if "kornia" in r else ""
                rows.append(
                    (f"5. data pipeline, {batch}, {preset}", f"{r['ours']:.0f} batches/s{kornia}")
                )
        if isinstance(s.get("kornia"), str):
            rows.append(("5. kornia", s["kornia"]))
        return rows
    if name == "sweep":
        what = f"6. sweep of {s['jobs']} jobs ({s['job']})"
        return [
            (f"{what}: parallel launcher, {s['parallel_slots']} at a time", f"{s['parallel_s']} s"),
            (f"{what}: parallel launcher, one at a time", f"{s['one_at_a_time_s']} s"),
            (f"{what}: Hydra's basic launcher, one at a time", f"{s['basic_launcher_s']} s"),
        ]
    if name == "memory":
        rows = []
        for key, what in (("one", "one job"), ("parallel", f"{s['parallel']['jobs']} such jobs")):
            r = s[key]
            rows.append(
                (
                    f"7. PSS, {what} ({s['job']})",
                    f"{r['pss_jobs_mb']} MB; training images ({r['data_file_mb']} MB): "
                    f"{r['data_resident_in_each_job_mb']} MB resident in each job, "
                    f"{r['data_pss_per_job_mb']} MB PSS per job, held {r['data_copies']} times",
                )
            )
        return rows
    if name == "gpu":
        if "skipped" in s:
            return [("8. GPU", f"skipped: {s['skipped']}")]
        return [
            (f"8. {s['device']}: {key}", f"{value} images/s")
            for key, value in s.items()
            if key not in ("device", "section_s")
        ]
    return []


def markdown(results: dict) -> str:
    m = results["machine"]
    hardware = f"{m['cpu']}, {m['cores']} cores, " + (f"GPU {m['gpu']}" if m["gpu"] else "no GPU")
    lines = [
        f"# Speed: {hardware}",
        "",
        f"`{results['command']}` (torch {m['torch']}, {m['torch_threads']} threads, "
        f"{results['scale']} scale; load average {m['load_average_at_start'][0]:.1f} at the "
        f"start, {m.get('load_average_at_end', [float('nan')])[0]:.1f} at the end)",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    for name, section in results["sections"].items():
        lines += [f"| {what} | {value} |" for what, value in _section_rows(name, section)]
    if results.get("targets"):
        lines += ["", "| target | measured | limit | met |", "|---|---|---|---|"]
        for t in results["targets"]:
            value = "-" if t["value"] is None else f"{t['value']:.3g}"
            lines.append(
                f"| {t['target']} | {value} | <= {t['limit']:g} | {'yes' if t['met'] else 'NO'} |"
            )
    return "\n".join(lines) + "\n"
