"""Learning-rate schedules as factories `schedule(optimizer, total_steps)`, stepped every batch."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, OneCycleLR


def cosine(optimizer: Optimizer, total_steps: int, min_lr: float = 0.0) -> LRScheduler:
    """Cosine decay from the optimizer's learning rate to `min_lr` over the whole run."""
    return CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=min_lr)


def one_cycle(optimizer: Optimizer, total_steps: int, pct_start: float = 0.25) -> LRScheduler:
    """Warm up to the optimizer's learning rate, then anneal to near zero (Smith's one-cycle)."""
    max_lr = [group["lr"] for group in optimizer.param_groups]
    return OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start, cycle_momentum=False
    )
