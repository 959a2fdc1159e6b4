"""Width schedules and pool placement for the general ConvNet preset (conf/model/convnet.yaml).

They turn the sweep knobs (depth, width, growth, kernel size, padding) into the per-layer lists
ConvNet takes; the config reaches them as the resolvers ${conv_widths:...} and ${pool_plan:...}.
"""

from __future__ import annotations

from collections.abc import Sequence

from src.errors import ConfigError
from src.models.convnet import conv_output_size, per_layer


def _plain(value):
    """OmegaConf hands lists to resolvers as ListConfig; ConvNet's checks want plain lists."""
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value


def conv_widths(
    width: int | Sequence[int], depth: int, growth: float = 2.0, max_width: int | None = None
) -> list[int]:
    """Output channels of each conv layer: `width`, times `growth` per layer, capped at
    `max_width`; or `width` itself when it is a list (one width per layer)."""
    width = _plain(width)
    if isinstance(width, list):
        if len(width) != depth:
            raise ConfigError(
                f"model.width lists {len(width)} widths {width} but model.depth={depth}: give one "
                f"width per conv layer or set model.depth={len(width)}"
            )
        return [int(w) for w in width]
    if int(depth) < 1:
        raise ConfigError(f"model.depth must be at least 1, got {depth}")
    widths = [round(int(width) * float(growth) ** i) for i in range(int(depth))]
    return [min(w, int(max_width)) if max_width else w for w in widths]


def pool_plan(
    depth: int,
    kernel_size: int | Sequence[int],
    padding: str | int | Sequence[str | int] = "valid",
    pool: str | bool | Sequence[bool] = "auto",
    image_size: int = 32,
) -> bool | list[bool]:
    """Where the 2x2 max-pools go. `auto`: after each conv layer, as long as the layers after
    it still fit the halved map (so every depth has a valid geometry when one exists); anything
    else is passed through (true, false, or one bool per layer)."""
    pool = _plain(pool)
    if pool != "auto":
        return pool
    kernels = per_layer(_plain(kernel_size), depth, "kernel_size")
    paddings = per_layer(_plain(padding), depth, "padding")
    # need[i]: the smallest map that conv layers i.. can take without pooling.
    need = [1] * (depth + 1)
    for i in reversed(range(depth)):
        need[i] = max(1, need[i + 1] - conv_output_size(0, kernels[i], paddings[i]))
    plan, size = [], image_size
    for i in range(depth):
        size = conv_output_size(size, kernels[i], paddings[i])
        fits = size >= 2 and size // 2 >= need[i + 1]
        plan.append(fits)
        if fits:
            size //= 2
    return plan
