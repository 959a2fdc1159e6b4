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
                        f"channels_last={str(channels_last).lower()}",
                        "data.on_device=true",
                    ],
                    warmup,
                    timed,
                    out,
                )
                key = f"{name} {precision}{' channels_last' if channels_last else ''}"
                results[key] = round(batch / seconds)
    return results
