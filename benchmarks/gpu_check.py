"""`make gpu-check`: the GPU paths end to end on a CUDA machine, in about 6 minutes on an H200.

python -m benchmarks.gpu_check [--data ROOT] [--out results/gpu] [--only a,b,...]

Steps, most important first (issue 11; docs/gpu.md): (a) the default run on the GPU against the
same recipe on the CPU, (b) eval and predict of its checkpoint on the GPU and on the CPU, (c)
SIGTERM and resume against an uninterrupted run, (d) fetch invariance, (e) every precision and a
compiled channels_last vgg6 with its recompile count, (f) trainer=ddp on one GPU, (g) a 4-seed
sweep 4 jobs per GPU and a CPU sweep on the cores, (h) benchmarks/gpu.py. Each step's commands,
status, figures and time go to check.json and check.md, rewritten after every step.

(i), only when named (`--only i`, up to 560 s): the reproduction rows
too long for a CPU (seed 002's vgg6, seed 003's bn6), seed 0 of each, recorded by src.reproduce
in `<out>/reproduce.json`; `python -m src.reproduce --merge results/gpu/reproduce.json` adds
them to the project's record (docs/reproducing.md).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from src.cli import ToolParser, exit_with

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path.home() / ".cache" / "cifar10-lab" / "cifar10-jpeg"
TOLERANCE = 1.5  # accuracy points between the GPU and the CPU run of one recipe


@dataclass
class Step:
    """One check: commands (argv lists, run in order from the repository root) and a judge that
    reads what they wrote and returns (passed, figures)."""

    key: str
    title: str
    commands: list[list[str]]
    judge: Callable[[list[subprocess.CompletedProcess]], tuple[bool, dict]]
    env: list[dict[str, str]] = field(default_factory=list)  # extra environment per command
    timeout_s: float | None = None  # instead of --step-timeout
    on_request: bool = False  # runs only when named in --only


def train(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "src.train", *overrides]


def metrics(run: Path) -> dict:
    path = run / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def plan(data: Path, out: Path, runs: Path = ROOT / "outputs" / "gpu-check") -> list[Step]:
    """The steps: results under `out`, run folders (checkpoints, logs) under `runs`."""
    base = [
        "data.source=folder",
        f"data.root={data}",
        "trainer.enable_progress_bar=false",
    ]
    gpu = [*base, "trainer.accelerator=gpu"]

    def run_dir(name: str) -> str:
        return f"hydra.run.dir={runs / name}"

    def ok(done) -> bool:
        return all(d.returncode == 0 for d in done)

    # (a) the default recipe (tutorial net, bf16-mixed, data on the GPU, fetches), 2 epochs.
    def judge_a(done):
        g, c = metrics(runs / "a_gpu"), metrics(runs / "a_cpu")
        figures = {
            "gpu_test_acc": g.get("test/acc"),
            "cpu_test_acc": c.get("test/acc"),
            "gpu_wall_s": g.get("wall_time_s"),
            "cpu_wall_s": c.get("wall_time_s"),
            "gpu_epoch_s": g.get("epoch_time_s"),
        }
        close = ok(done) and abs(g["test/acc"] - c["test/acc"]) <= TOLERANCE
        return close, figures

    a = Step(
        "a",
        f"default run on the GPU, 2 epochs, within {TOLERANCE} points of the CPU",
        [
            train(*gpu, "trainer.max_epochs=2", run_dir("a_gpu")),
            train(*base, "trainer.accelerator=cpu", "trainer.max_epochs=2", run_dir("a_cpu")),
        ],
        judge_a,
        env=[{}, {"CUDA_VISIBLE_DEVICES": ""}],
    )

    # (b) the GPU checkpoint evaluated and predicting on the GPU and on the CPU.
    ckpt = runs / "a_gpu" / "checkpoints" / "best.ckpt"
    inputs = data / "test" / "cat"

    def judge_b(done):
        ev = [metrics(runs / f"b_eval_{d}").get("test/acc") for d in ("gpu", "cpu")]
        preds = []
        for d in ("gpu", "cpu"):
            path = runs / f"b_predict_{d}" / "predictions.csv"
            preds.append([r["pred"] for r in csv.DictReader(path.open())] if path.exists() else [])
        agree = sum(x == y for x, y in zip(*preds, strict=False)) / max(len(preds[0]), 1)
        figures = {"eval_gpu": ev[0], "eval_cpu": ev[1], "predict_agreement": agree}
        passed = ok(done) and ev[0] is not None and abs(ev[0] - ev[1]) <= 0.05 and agree >= 0.99
        return passed, figures

    evals = [
        [sys.executable, "-m", "src.eval", f"ckpt_path={ckpt}", *base, run_dir(f"b_eval_{d}")]
        for d in ("gpu", "cpu")
    ]
    predicts = [
        [
            sys.executable,
            "-m",
            "src.predict",
            f"ckpt_path={ckpt}",
            f"inputs={inputs}",
            "print_limit=0",
            run_dir(f"b_predict_{d}"),
        ]
        for d in ("gpu", "cpu")
    ]
    b = Step(
        "b",
        "eval and predict of the GPU checkpoint on the GPU and on the CPU agree",
        [evals[0], evals[1], predicts[0], predicts[1]],
        judge_b,
        env=[{}, {"CUDA_VISIBLE_DEVICES": ""}, {}, {"CUDA_VISIBLE_DEVICES": ""}],
    )

    # (c) SIGTERM mid-epoch, resume, against an uninterrupted run (deterministic kernels).
    det = [*gpu, "trainer.deterministic=true", "trainer.max_epochs=2", "data.augment=flip_crop"]
    sigterm = [
        "+callbacks.signal._target_=tests.signals.SignalAt",
        "+callbacks.signal.step=900",
        "+callbacks.signal.signal_name=SIGTERM",
    ]

    def judge_c(done):
        whole, resumed = metrics(runs / "c_whole"), metrics(runs / "c_resumed")
        keys = ("val/acc_best", "test/acc", "test/loss")
        figures = {f"{k} whole|resumed": [whole.get(k), resumed.get(k)] for k in keys}
        stopped = done[1].returncode == 143  # 128 + SIGTERM, as a shell reports it
        same = all(whole.get(k) == resumed.get(k) for k in keys)
        return done[0].returncode == 0 and stopped and done[2].returncode == 0 and same, figures

    c = Step(
        "c",
        "SIGTERM mid-epoch and resume equals an uninterrupted run (trainer.deterministic=true)",
        [
            train(*det, run_dir("c_whole")),
            train(*det, *sigterm, run_dir("c_resumed")),
            train(*det, "resume=true", run_dir("c_resumed")),
        ],
        judge_c,
    )

    # (d) data.fetch_size changes nothing, augmentation and dropout included.
    fetch = [*gpu, "trainer.deterministic=true", "trainer.max_epochs=1", "data.augment=seed004"]
    fetch += ["model.dropout=0.3"]

    def judge_d(done):
        one, many = metrics(runs / "d_fetch64"), metrics(runs / "d_fetch1024")
        keys = ("val/acc_best", "test/acc", "test/loss")
        figures = {f"{k} fetch 64|1024": [one.get(k), many.get(k)] for k in keys}
        return ok(done) and all(one.get(k) == many.get(k) for k in keys), figures

    d = Step(
        "d",
        "data.fetch_size=64 and 1024 give the same run (seed004 augmentation, dropout)",
        [train(*fetch, f"data.fetch_size={n}", run_dir(f"d_fetch{n}")) for n in (64, 1024)],
        judge_d,
    )

    # (e) every precision, 300 steps each; then vgg6 compiled, channels_last, counting recompiles.
    precisions = ["32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true"]
    short = [*gpu, "trainer.max_epochs=1", "data.val_size=1000"]  # with trainer.max_steps

    def judge_e(done):
        figures = {
            p: {
                "status": metrics(runs / f"e_{p}").get("status"),
                "test_acc": metrics(runs / f"e_{p}").get("test/acc"),
            }
            for p in precisions
        }
        log = done[-1].stdout + done[-1].stderr
        figures["vgg6_compiled_test_acc"] = metrics(runs / "e_vgg6_compiled").get("test/acc")
        figures["vgg6_compiled_wall_s"] = metrics(runs / "e_vgg6_compiled").get("wall_time_s")
        figures["recompiles"] = len(re.findall(r"Recompiling function", log))
        return ok(done) and figures["recompiles"] <= 8, figures

    e = Step(
        "e",
        "each precision trains; vgg6 with model.compile, model.channels_last; recompiles counted",
        [
            *(
                train(
                    *short, "++trainer.max_steps=300", f"trainer.precision={p}", run_dir(f"e_{p}")
                )
                for p in precisions
            ),
            train(
                *short,
                "model=vgg6",
                "model.compile=true",
                "model.channels_last=true",
                "++trainer.max_steps=200",
                run_dir("e_vgg6_compiled"),
            ),
        ],
        judge_e,
        env=[{}] * len(precisions) + [{"TORCH_LOGS": "recompiles"}],
    )

    # (f) the DDP code path on one GPU.
    def judge_f(done):
        m = metrics(runs / "f_ddp")
        return ok(done) and m.get("status") == "finished", {"test_acc": m.get("test/acc")}

    f = Step(
        "f",
        "trainer=ddp trainer.devices=1 trains and tests",
        [
            train(
                *short,
                "++trainer.max_steps=300",
                "trainer=ddp",
                "trainer.devices=1",
                run_dir("f_ddp"),
            )
        ],
        judge_f,
    )

    # (g) 4 seeds 4 at a time on the GPU; a CPU sweep on the same machine uses the cores.
    sweep = ["-m", *short, "++trainer.max_steps=200", "seed=1,2,3,4"]

    def judge_g(done):
        from hydra_plugins.cifar10_lab_launcher.parallel_launcher import LAUNCHING

        gpu_log = done[0].stdout + done[0].stderr
        cpu_log = done[1].stdout + done[1].stderr
        figures = {
            "gpu_4_at_once": LAUNCHING % (4, 4, 4) in gpu_log,
            "cpu_slots": re.findall(r"\(cpu, cores [0-9,-]+", cpu_log),
        }
        cpu_ok = len(figures["cpu_slots"]) == 2 and LAUNCHING % (2, 2, 2) in cpu_log
        fused_log = done[2].stdout + done[2].stderr
        fused = [metrics(runs / "g_fused_sweep" / f"seed={s}") for s in range(1, 5)]
        figures["fused_group"] = "group 1/1: fused 4 jobs" in fused_log
        figures["fused_test_acc"] = [m.get("test/acc") for m in fused]
        fused_ok = figures["fused_group"] and all(m.get("status") == "finished" for m in fused)
        return ok(done) and figures["gpu_4_at_once"] and cpu_ok and fused_ok, figures

    g = Step(
        "g",
        "a 4-seed sweep runs 4 jobs at once on the GPU; a CPU sweep runs on the cores; the 4 "
        "seeds fused into one model on one GPU slot",
        [
            train(
                *sweep,
                "hydra.launcher.jobs_per_device=4",
                f"hydra.sweep.dir={runs / 'g_gpu_sweep'}",
            ),
            train(
                "-m",
                *base,
                "trainer.accelerator=cpu",
                "++trainer.max_steps=50",
                "trainer.max_epochs=1",
                "data.val_size=1000",
                "seed=1,2",
                f"hydra.sweep.dir={runs / 'g_cpu_sweep'}",
            ),
            train(
                *sweep,
                "hydra.launcher.jobs_per_device=1",
                "hydra.launcher.fuse=auto",
                f"hydra.sweep.dir={runs / 'g_fused_sweep'}",
            ),
        ],
        judge_g,
    )

    # (h) benchmarks/gpu.py: images per second of every preset, and sweep throughput.
    def judge_h(done):
        path = out / "bench.json"
        figures = json.loads(path.read_text()) if path.exists() else {}
        return ok(done) and bool(figures.get("presets")), figures

    h = Step(
        "h",
        "benchmarks/gpu.py: images/s of every preset, sweep throughput at 1, 2, 4, 8 jobs per GPU "
        "and of 16 jobs fused on one",
        [[sys.executable, "-m", "benchmarks.gpu", f"--data={data}", f"--out={out / 'bench.json'}"]],
        judge_h,
        timeout_s=360,
    )
    # (i) the rows a CPU cannot afford, on the GPU, recorded as src.reproduce records them.
    record = out / "reproduce.json"

    def judge_i(done):
        runs = json.loads(record.read_text())["runs"] if record.exists() else []
        figures = {r["row"]: {"test_acc": r["test_acc"], "hardware": r["hardware"],
                              "wall_time_s": r["wall_time_s"]} for r in runs}  # fmt: skip
        return ok(done) and len(figures) == 2, figures

    i = Step(
        "i",
        "reproduction: seed 0 of vgg6 (seed 002) and bn6 (seed 003) on the GPU",
        [
            [
                sys.executable,
                "-m",
                "src.reproduce",
                "--only",
                "seed002_model3",
                "seed003_bn6",
                "--seeds",
                "0",
                f"--out={record}",
                "--lock=",
                *base,
                "trainer.accelerator=gpu",
            ]  # fmt: skip
        ],
        judge_i,
        timeout_s=560,  # one device call (600 s) with its start-up
        on_request=True,
    )
    return [a, b, c, d, e, f, g, h, i]


def run_step(step: Step, timeout_s: float) -> dict:
    timeout_s = step.timeout_s or timeout_s
    started = time.perf_counter()
    done: list[subprocess.CompletedProcess] = []
    for i, command in enumerate(step.commands):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(step.env[i] if step.env else {})}
        left = timeout_s - (time.perf_counter() - started)
        try:
            done.append(
                subprocess.run(
                    command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(left, 1)
                )
            )
        except subprocess.TimeoutExpired as err:
            out = err.stdout.decode() if isinstance(err.stdout, bytes) else err.stdout or ""
            done.append(subprocess.CompletedProcess(command, 124, out, "timed out"))
            break
    try:
        passed, figures = step.judge(done) if len(done) == len(step.commands) else (False, {})
    except Exception as err:  # a missing file or figure: the step failed, say why
        passed, figures = False, {"judge_error": f"{type(err).__name__}: {err}"}
    failed = [d for d in done if d.returncode != 0]
    return {
        "step": step.key,
        "title": step.title,
        "commands": [
            " ".join(c[1:]) if c[0] == sys.executable else " ".join(c) for c in step.commands
        ],
        "status": "passed" if passed else "failed",
        "figures": figures,
        "time_s": round(time.perf_counter() - started, 1),
        "exit_codes": [d.returncode for d in done],
        "error_tail": (failed[0].stderr or failed[0].stdout)[-1500:] if failed else None,
    }


def write_results(out: Path, header: dict, results: list[dict]) -> None:
    """check.json (everything) and check.md (a table and each step's figures)."""
    from src.files import write_json, write_text

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "check.json", {**header, "steps": results})
    lines = [
        f"# GPU check: {header.get('device', '?')}",
        "",
        f"commit {header.get('commit', '?')}, torch {header.get('torch', '?')}, "
        f"{header.get('started', '')}",
        "",
        "| step | status | time (s) | what |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {r['step']} | {r['status']} | {r['time_s']} | {r['title']} |" for r in results]
    for r in results:
        lines += ["", f"## ({r['step']}) {r['title']}", ""]
        lines += [f"    python {c}" for c in r["commands"]]
        lines += ["", "```json", json.dumps(r["figures"], indent=1), "```"]
        if r["status"] != "passed" and r["error_tail"]:
            lines += ["", "```", r["error_tail"], "```"]
    write_text(out / "check.md", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = ToolParser("python -m benchmarks.gpu_check", __doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "gpu")
    parser.add_argument("--only", default="", help="comma-separated step letters (default: all)")
    parser.add_argument("--step-timeout", type=float, default=240)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        exit_with(
            "no CUDA GPU here (torch.cuda.is_available() is False): run it on a GPU machine "
            "(docs/gpu.md)"
        )
    if not (args.data / "train").is_dir():
        exit_with(
            f"no CIFAR-10 image folder at {args.data}: run `make device-bundle` here, "
            "or pass --data"
        )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    header = {
        "device": torch.cuda.get_device_name(0),
        "capability": list(torch.cuda.get_device_capability(0)),
        "torch": torch.__version__,
        "commit": commit or None,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    wanted = set(args.only.split(",")) - {""}
    results: list[dict] = []
    for step in plan(args.data.resolve(), args.out.resolve()):
        if (wanted and step.key not in wanted) or (step.on_request and step.key not in wanted):
            continue
        result = run_step(step, args.step_timeout)
        results.append(result)
        write_results(args.out, header, results)
        print(
            f"({step.key}) {result['status']:6} {result['time_s']:6.1f} s  {step.title}", flush=True
        )
    return 0 if all(r["status"] == "passed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
