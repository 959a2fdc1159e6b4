"""One general ConvNet builder: every network of the seed studies is a config over it.

A conv layer is Conv2d -> [BatchNorm2d] -> ReLU -> [MaxPool2d(2)] -> [Dropout]; the head is
Flatten -> (Linear -> ReLU -> [Dropout]) per hidden size -> Linear to the classes. The flatten
size is computed, and the geometry is checked before any training starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import nn

from src.errors import ConfigError, GeometryError

T = TypeVar("T")


def per_layer(value: T | Sequence[T], n: int, name: str) -> list[T]:
    """Broadcast one value to `n` layers, or check that a list has one value per layer."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != n:
            raise ConfigError(
                f"model.{name} has {len(value)} values {list(value)} for {n} layers: give one "
                f"value, or one per layer (the conv layers are model.widths)"
            )
        return list(value)
    return [value] * n


def conv_output_size(size: int, kernel: int, padding: int | str) -> int:
    if padding == "same":
        return size
    if padding == "valid":
        padding = 0
    return size + 2 * int(padding) - kernel + 1


def auto_pools(kernels: list[int], paddings: list[int | str], image_size: int) -> list[bool]:
    """Where `pool="auto"` puts the 2x2 max-pools: after each conv layer, as long as the layers
    after it still fit the halved map, so every depth gets a valid geometry when one exists."""
    depth = len(kernels)
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


class ConvNet(nn.Module):
    """Conv layers then a fully connected head.

    Args:
        channels: output channels of each conv layer (its length is the conv depth).
        kernel_size: one size for every conv layer, or one per layer.
        padding: "valid" (0, the seeds' default), "same", or an int; one or one per layer.
        pool: whether each conv layer ends with a 2x2 max-pool; one or one per layer, or
            "auto" (after each layer while the layers after it still fit: `auto_pools`).
        batch_norm: BatchNorm2d after each conv (before the ReLU); one or one per layer.
        conv_dropout: dropout after each conv layer (0 for none); one or one per layer.
        hidden: sizes of the hidden linear layers of the head.
        dropout: dropout after each hidden linear layer; one or one per hidden layer.
    """

    def __init__(
        self,
        channels: Sequence[int],
        kernel_size: int | Sequence[int] = 3,
        padding: int | str | Sequence[int | str] = "valid",
        pool: str | bool | Sequence[bool] = "auto",
        batch_norm: bool | Sequence[bool] = False,
        conv_dropout: float | Sequence[float] = 0.0,
        hidden: Sequence[int] = (),
        dropout: float | Sequence[float] = 0.0,
        in_channels: int = 3,
        num_classes: int = 10,
        image_size: int = 32,
    ):
        super().__init__()
        depth = len(channels)
        if depth < 1:
            raise ConfigError("model needs at least one conv layer (model channels is empty)")
        for name, sizes in (("channels", channels), ("hidden", hidden)):
            if any(int(s) < 1 for s in sizes):
                raise ConfigError(f"model {name} must all be positive, got {list(sizes)}")
        kernels = per_layer(kernel_size, depth, "kernel_size")
        paddings = per_layer(padding, depth, "padding")
        for i, pad in enumerate(paddings, start=1):
            if pad not in ("same", "valid") and not isinstance(pad, int):
                raise ConfigError(f"conv{i} padding must be 'valid', 'same' or an int, got {pad!r}")
        if pool == "auto":
            pool = auto_pools(kernels, paddings, image_size)
        pools = per_layer(pool, depth, "pool")
        norms = per_layer(batch_norm, depth, "batch_norm")
        conv_drops = per_layer(conv_dropout, depth, "conv_dropout")
        head_drops = per_layer(dropout, len(hidden), "dropout")

        layers: list[nn.Module] = []
        size, width = image_size, in_channels
        for i, (out, k, pad) in enumerate(zip(channels, kernels, paddings, strict=True), start=1):
            if conv_output_size(size, k, pad) < 1:
                raise GeometryError(
                    f"conv{i} (kernel {k}, padding {pad}) does not fit its {size}x{size} input: "
                    "use a smaller kernel, padding='same', fewer pools or fewer conv layers"
                )
            size = conv_output_size(size, k, pad)
            layers.append(nn.Conv2d(width, out, k, padding=pad))
            if norms[i - 1]:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            if pools[i - 1]:
                if size < 2:
                    raise GeometryError(
                        f"pool after conv{i} gets a {size}x{size} map and cannot halve it: "
                        "pool fewer layers, use padding='same' or smaller kernels"
                    )
                layers.append(nn.MaxPool2d(2, 2))
                size //= 2
            if conv_drops[i - 1]:
                layers.append(nn.Dropout(conv_drops[i - 1]))
            width = out
        self.features = nn.Sequential(*layers)
        self.flat_features = width * size * size
        self.out_size = size

        head: list[nn.Module] = [nn.Flatten()]
        width = self.flat_features
        for out, drop in zip(hidden, head_drops, strict=True):
            head += [nn.Linear(width, out), nn.ReLU(inplace=True)]
            if drop:
                head.append(nn.Dropout(drop))
            width = out
        head.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def layer_summary(net: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[str, tuple, int]]:
    """(layer, output shape, parameters) for every leaf layer, like Keras's model.summary()."""
    rows: list[tuple[str, tuple, int]] = []
    hooks = [
        module.register_forward_hook(
            lambda m, _i, out, name=name: rows.append(
                (f"{name} ({type(m).__name__})", tuple(out.shape[1:]), count_parameters(m))
            )
        )
        for name, module in net.named_modules()
        if not list(module.children())
    ]
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, *input_shape))
    finally:
        net.train(was_training)
        for hook in hooks:
            hook.remove()
    return rows
