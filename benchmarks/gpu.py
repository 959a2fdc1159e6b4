"""On a GPU: training images per second of cifar10-lab with the data set on the GPU, for the
tutorial net and the VGG-like net, bf16 and channels_last each on and off."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.loops import lab_step_time

BATCH = {"tutorial": 512, "vgg6": 256}


def gpu_rates(
    base: Sequence[str], nets: dict[str, Sequence[str]], warmup: int, timed: int, out: Path
) -> dict:
    """Images per second for each net (`nets`: name -> model overrides) and setting."""
    if not torch.cuda.is_available():
        return {"skipped": "no GPU"}
    results: dict = {"device": torch.cuda.get_device_name(0)}
    for name, model in nets.items():
        batch = BATCH[name]
        for precision in ("32-true", "bf16-mixed"):
            for channels_last in (False, True):
                seconds = lab_step_time(
                    [
                        *base,
                        *model,
                        f"data.batch_size={batch}",
                        "trainer.accelerator=gpu",
                        f"trainer.precision={precision}",
                        f"model.channels_last={str(channels_last).lower()}",
                        "data.on_device=true",
                    ],
                    warmup,
                    timed,
                    out,
                )
                key = f"{name} {precision}{' channels_last' if channels_last else ''}"
                results[key] = round(batch / seconds)
    return results


# Each preset's batch size in its study (conf/experiment); convnet is the general preset.
STUDY_BATCH = {
    "tutorial": 4,
    "conv2": 4,
    "conv3": 4,
    "conv4": 4,
    "cnn3": 20,
    "vgg6": 20,
    "bn6": 16,
    "lenet3": 100,
    "convnet": 64,
}


def preset_rates(base: list[str], warmup: int, timed: int, out: Path) -> dict:
    """Training images per second of every preset on the GPU at its study batch and at 512
    (default precision, data on the GPU, fetches)."""
    rates: dict = {}
    for name, batch in STUDY_BATCH.items():
        for size in (batch, 512):
            overrides = [*base, f"model={name}", f"data.batch_size={size}"]
            seconds = lab_step_time(overrides, warmup, timed, out / "runs")
            rates[f"{name} batch {size}"] = round(size / seconds)
    return rates


def sweep_rates(base: list[str], steps: int, out: Path) -> dict:
    """Training images per second of a whole GPU running the tutorial recipe at batch 4 as a
    sweep of n jobs n at a time (hydra.launcher.jobs_per_device=n), and as 16 jobs fused into one
    model (hydra.launcher.fuse=auto, one slot): jobs x steps x 4 images over the slowest job's
    training time (process start and data loading left out; no validation, which a fused
    member's epoch time leaves out)."""
    import json
    import subprocess
    import sys

    ways = {f"{n} jobs per GPU": (n, n, "off") for n in (1, 2, 4, 8)}
    ways["16 jobs fused on one GPU"] = (16, 1, "auto")
    rates: dict = {}
    for name, (jobs, per_device, fuse) in ways.items():
        sweep_dir = out / "runs" / f"sweep_{jobs}_{fuse}"
        seeds = ",".join(str(s) for s in range(jobs))
        command = [
            sys.executable, "-m", "src.train", "-m", *base, "model=tutorial", "data.batch_size=4",
            f"++trainer.max_steps={steps}", "trainer.max_epochs=1", "data.val_size=0",
            f"seed={seeds}", f"hydra.launcher.jobs_per_device={per_device}",
            f"hydra.launcher.fuse={fuse}", f"hydra.sweep.dir={sweep_dir}",
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)
        times = [
            json.loads(p.read_text())["epoch_time_s"] for p in sweep_dir.glob("*/metrics.json")
        ]
        rates[name] = round(jobs * steps * 4 / max(times))
    fused = rates["16 jobs fused on one GPU"]
    rates["fused against 1 job per GPU"] = round(fused / rates["1 jobs per GPU"], 2)
    rates["fused against 8 jobs per GPU"] = round(fused / rates["8 jobs per GPU"], 2)
    return rates


def main(argv: list[str] | None = None) -> None:
    """python -m benchmarks.gpu --data ROOT --out bench.json (step (h) of make gpu-check)."""
    import json

    from src.cli import ToolParser, exit_with
    from src.files import write_json

    parser = ToolParser("python -m benchmarks.gpu", "images/s of every preset and of GPU sweeps")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--timed", type=int, default=50)
    parser.add_argument("--sweep-steps", type=int, default=1500)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        exit_with("no CUDA GPU here (torch.cuda.is_available() is False): run it on a GPU machine")
    base = [
        "data.source=folder",
        f"data.root={args.data}",
        "trainer.accelerator=gpu",
        "trainer.enable_progress_bar=false",
    ]
    work = Path(__file__).resolve().parents[1] / "outputs" / "gpu-bench"  # git-ignored
    results = {"device": torch.cuda.get_device_name(0)}
    results["presets"] = preset_rates(base, args.warmup, args.timed, work)
    results["sweep_tutorial_batch4"] = sweep_rates(base, args.sweep_steps, work)
    write_json(args.out, results)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
