"""Fused sweeps (src.fused) against separate runs: the tutorial net at batch 4 (or --batch).

K members, each with its own seed (weights) and SGD optimizer (momentum 0.9), with learning rates
as in a sweep of 4 of them (members 0, 4, 8, ... share one), for a fixed number of optimizer steps
on random data (speed only): K separate nets stepped one after another (the Classifier's step:
forward, cross-entropy, zero_grad, backward, step), and the K fused by src.fused.FusedConvNet as
train_group steps them (the members' weights stacked once, one backward, one SGD update of the
stacked weights with each member's learning rate: src.fused.optim.GroupStep). Prints and writes
ms per step per member to results/bench/fused.json.

    nice python -m benchmarks.fused [--steps 200] [--batch 4] [K ...]
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from src.cli import ToolParser, run_tool
from src.files import write_json
from src.fused.net import FusedConvNet, fuse_inputs
from src.fused.optim import GroupStep
from src.models import ConvNet

RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench" / "fused.json"
LEARNING_RATES = (0.0005, 0.001, 0.002, 0.004)  # benchmarks.sweep_launcher --fused's


def tutorial_net(seed: int) -> ConvNet:  # conf/model/tutorial.yaml
    torch.manual_seed(seed)
    return ConvNet([6, 16], kernel_size=5, hidden=[120, 84])


def images(n: int) -> torch.Tensor:
    """Random images laid out as the loader hands them out: channels-last (the cache holds
    N x H x W x C), which is what the convolutions run on in training."""
    return torch.rand(n, 32, 32, 3).permute(0, 3, 1, 2)


def optimizers(nets):
    return [
        torch.optim.SGD(n.parameters(), lr=LEARNING_RATES[i % len(LEARNING_RATES)], momentum=0.9)
        for i, n in enumerate(nets)
    ]


def clock(step, steps: int, warm: int = 20) -> float:
    for _ in range(warm):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps * 1e3


def separate(k: int, steps: int, batch: int) -> float:
    nets = [tutorial_net(i) for i in range(k)]
    opts = optimizers(nets)
    x, y = [images(batch) for _ in range(k)], torch.randint(0, 10, (k, batch))

    def step():
        for i, (net, opt) in enumerate(zip(nets, opts, strict=True)):
            loss = F.cross_entropy(net(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()

    return clock(step, steps)


def fused(k: int, steps: int, batch: int) -> float:
    nets = [tutorial_net(i) for i in range(k)]
    opts = optimizers(nets)
    net = FusedConvNet(nets)
    x = fuse_inputs(images(k * batch), k)
    y = torch.randint(0, 10, (k, batch))

    group_step = GroupStep(net.shared, opts)

    def step():
        logits = net(x)
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        net.zero_grad()
        losses.view(k, batch).mean(1).sum().backward()
        group_step(first=[False] * k)

    return clock(step, steps)


def measure(ks: list[int], steps: int, batch: int, out: Path) -> None:
    rows = {}
    for k in ks:
        alone, together = separate(k, steps, batch), fused(k, steps, batch)
        rows[k] = {
            "separate_ms_per_step_per_member": round(alone / k, 3),
            "fused_ms_per_step_per_member": round(together / k, 3),
            "speedup": round(alone / together, 2),
        }
        print(
            f"K={k:2d}: separate {alone / k:.2f} ms, fused {together / k:.2f} ms per step per "
            f"member ({alone / together:.2f}x)",
            flush=True,
        )
    result = {
        "batch": batch,
        "steps": steps,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "k": rows,
    }
    write_json(out, result)
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    parser = ToolParser("python -m benchmarks.fused", __doc__.split("\n")[0])
    parser.add_argument("ks", nargs="*", type=int, default=[1, 4, 8, 16], metavar="K")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=4, help="images per step per member")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write (JSON)")
    args = parser.parse_args(argv)
    return run_tool(lambda: measure(args.ks, args.steps, args.batch, args.out))


if __name__ == "__main__":
    sys.exit(main())
