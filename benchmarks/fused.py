"""Fused sweeps (src.fused) against separate runs: the tutorial net at the seeds' batch 4.

K members, each with its own seed (weights), learning rate and SGD optimizer (momentum 0.9), for
a fixed number of optimizer steps on random data (speed only): K separate nets stepped one after
another (the Classifier's step: forward, cross-entropy, zero_grad, backward, step), and the K
fused by src.fused.FusedConvNet as train_group steps them (weights concatenated per step, one
backward, each member's own optimizer step). Prints and writes ms per step per member to
results/bench/fused.json.

    nice python -m benchmarks.fused [--steps 200] [K ...]
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
from src.models import ConvNet

RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench" / "fused.json"
BATCH = 4


def tutorial_net(seed: int) -> ConvNet:  # conf/model/tutorial.yaml
    torch.manual_seed(seed)
    return ConvNet([6, 16], kernel_size=5, hidden=[120, 84])


def optimizers(nets, lrs):
    return [
        torch.optim.SGD(n.parameters(), lr=lr, momentum=0.9)
        for n, lr in zip(nets, lrs, strict=True)
    ]


def clock(step, steps: int, warm: int = 20) -> float:
    for _ in range(warm):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps * 1e3


def separate(k: int, steps: int) -> float:
    nets = [tutorial_net(i) for i in range(k)]
    opts = optimizers(nets, [1e-3 * (i + 1) for i in range(k)])
    x, y = torch.rand(k, BATCH, 3, 32, 32), torch.randint(0, 10, (k, BATCH))

    def step():
        for i, (net, opt) in enumerate(zip(nets, opts, strict=True)):
            loss = F.cross_entropy(net(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()

    return clock(step, steps)


def fused(k: int, steps: int) -> float:
    nets = [tutorial_net(i) for i in range(k)]
    opts = optimizers(nets, [1e-3 * (i + 1) for i in range(k)])
    net = FusedConvNet(nets)
    x = fuse_inputs(torch.rand(k * BATCH, 3, 32, 32), k)
    y = torch.randint(0, 10, (k, BATCH))

    def step():
        logits = net(x)
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        for opt in opts:
            opt.zero_grad()
        losses.view(k, BATCH).mean(1).sum().backward()
        for opt in opts:
            opt.step()

    return clock(step, steps)


def measure(ks: list[int], steps: int, out: Path) -> None:
    rows = {}
    for k in ks:
        alone, together = separate(k, steps), fused(k, steps)
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
        "batch": BATCH,
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
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write (JSON)")
    args = parser.parse_args(argv)
    return run_tool(lambda: measure(args.ks, args.steps, args.out))


if __name__ == "__main__":
    sys.exit(main())
