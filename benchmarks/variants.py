"""What else could make the tutorial net's training step faster on this CPU: each variant timed.

    python -m benchmarks.variants [--batch 256] [--threads 1] [--out results.json]

The `flops` section of `python -m benchmarks` finds the tutorial net at batch 256 far from the
matrix-multiply floor; these are the settings that leave the network itself unchanged and
might close the gap: channels_last memory format, bf16 autocast (this CPU has AVX512-BF16),
torch.compile, and oneDNN switched off (PyTorch's own convolutions). Each variant is a plain
loop (forward, cross-entropy, backward, SGD step) on random images; the time per step is the
best of three rounds (the variants take turns in each), in CPU time of the process
(`--threads 1` by default: on a machine that other work shares, one thread's CPU time is the
steadier measure).
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import build_net, compose_train
from src.cli import ToolParser
from src.files import write_json

VARIANTS = {
    "fp32 (default)": {},
    "channels_last": {"channels_last": True},
    "bf16 autocast": {"bf16": True},
    "bf16 autocast + channels_last": {"bf16": True, "channels_last": True},
    "torch.compile": {"compiled": True},
    "oneDNN off": {"mkldnn": False},
}


def tutorial_net() -> torch.nn.Module:
    """The tutorial preset's network (conf/model/tutorial.yaml), freshly initialised."""
    cfg = compose_train(["model=tutorial"], Path(tempfile.gettempdir()) / "cifar10-lab-variants")
    return build_net(cfg, num_classes=10)


def make_step(
    batch: int,
    channels_last: bool = False,
    bf16: bool = False,
    compiled: bool = False,
    mkldnn: bool = True,
) -> Callable[[], None]:
    """One training step of the variant, as a function, after five warm-up steps."""
    torch.manual_seed(0)
    net = tutorial_net()
    images, labels = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(net) if compiled else net
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        with (
            torch.backends.mkldnn.flags(enabled=mkldnn),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16),
        ):
            loss = F.cross_entropy(forward(images), labels)
            optimizer.zero_grad()
            loss.backward()
        optimizer.step()

    for _ in range(5):  # warm-up (and compilation) outside the clock
        step()
    return step


def step_times(steps: dict[str, Callable[[], None]], n: int, rounds: int = 3) -> dict[str, float]:
    """Seconds of CPU time per step of each variant: the best of `rounds` rounds of `n` steps,
    the variants taking turns in each round (so a slow drift of a shared machine does not
    favour one of them)."""
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.process_time()
            for _ in range(n):
                step()
            best[name] = min(best[name], (time.process_time() - start) / n)
    return best


def profile_table(batch: int, steps: int, rows: int = 12) -> str:
    """The torch profiler's table of the default variant's operators, by their own CPU time."""
    from torch.profiler import ProfilerActivity, profile

    step = make_step(batch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv: list[str] | None = None) -> int:
    parser = ToolParser("python -m benchmarks.variants", __doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="these variants")
    parser.add_argument("--out", type=Path, help="also write the results here (JSON)")
    parser.add_argument(
        "--profile", action="store_true", help="print where the default variant's time goes"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # mkldnn.flags() sets oneDNN's TF32 switch too, which warns on CPUs (it is for Intel GPUs).
    warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
    if args.profile:
        print(profile_table(args.batch, args.steps))
    names = list(dict.fromkeys(args.only or VARIANTS))
    seconds = step_times(
        {name: make_step(args.batch, **VARIANTS[name]) for name in names}, args.steps
    )
    baseline = seconds[names[0]]
    results = {}
    for name in names:
        ms, ratio = seconds[name] * 1e3, seconds[name] / baseline
        results[name] = {"ms_per_step": round(ms, 2), "vs_first": round(ratio, 2)}
        print(f"{name:32s} {ms:8.2f} ms per step ({ratio:.2f}x)", flush=True)
    if args.out:
        settings = {"batch": args.batch, "threads": args.threads, "torch": torch.__version__}
        write_json(args.out, {**settings, "variants": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
