"""CIFAR-10 data: sources, the uint8 cache, splits, batch loaders and batch augmentation."""

from src.data.datamodule import CIFAR10DataModule

__all__ = ["CIFAR10DataModule"]
