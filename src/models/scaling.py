"""Width schedule of the general ConvNet preset (conf/model/convnet.yaml): its sweep knobs
(depth, base width, growth, cap) become the per-layer widths, through ${conv_widths:...}."""

from __future__ import annotations

from src.errors import ConfigError


def conv_widths(
    base_width: int, depth: int, growth: float = 2.0, max_width: int | None = None
) -> list[int]:
    """Output channels of each conv layer: `base_width`, times `growth` per layer, capped at
    `max_width`."""
    if int(depth) < 1:
        raise ConfigError(f"model.depth must be at least 1, got {depth}")
    widths = [round(int(base_width) * float(growth) ** i) for i in range(int(depth))]
    return [min(w, int(max_width)) if max_width else w for w in widths]
