"""One optimizer step for a whole fused group.

Each member keeps its own optimizer (its state is what the member's checkpoints hold), but
stepping K optimizers one after another pays K times the per-call overhead (on a GPU, K times
the kernel launches) on tensors that are tiny. Members whose optimizer is plain SGD with the same
settings at this step (every member of a seed sweep; an lr sweep's members of one lr) take one
multi-tensor step over all their parameters instead: torch's own SGD update
(torch.optim.sgd.sgd, foreach), so each member's numbers are those its SGD.step would give.
Other optimizers step alone, and so does every optimizer's first step: an LR scheduler warns
unless that one was taken by optimizer.step. (With nesterov, the multi-tensor update leaves the
momentum-added value in the gradient tensors; nothing reads them before the next zero_grad.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.optim import SGD, Optimizer
from torch.optim.sgd import sgd

SGD_SETTINGS = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")


def step_all(optimizers: Sequence[Optimizer], first: Sequence[bool]) -> None:
    """Step every optimizer: same-settings SGD optimizers together, the others and those
    taking their `first` step alone."""
    together: dict[tuple, list[Optimizer]] = {}
    for optimizer, first_step in zip(optimizers, first, strict=True):
        settings = None if first_step else sgd_settings(optimizer)
        if settings is None:
            optimizer.step()
        else:
            together.setdefault(settings, []).append(optimizer)
    for settings, group in together.items():
        if len(group) == 1:
            group[0].step()
        else:
            step_sgd(group, dict(zip(SGD_SETTINGS, settings, strict=True)))


def sgd_settings(optimizer: Optimizer) -> tuple | None:
    """The settings of a plain SGD optimizer (one parameter group); None for others."""
    if type(optimizer) is not SGD or len(optimizer.param_groups) != 1:
        return None
    group = optimizer.param_groups[0]
    plain = not (group.get("differentiable") or group.get("fused"))
    if not plain or group.get("foreach") is False or isinstance(group["lr"], torch.Tensor):
        return None
    return tuple(group[key] for key in SGD_SETTINGS)


@torch.no_grad()
def step_sgd(optimizers: Sequence[Optimizer], settings: dict) -> None:
    """One SGD step over the parameters of all `optimizers` (all with these `settings`)."""
    params, grads, buffers, owners = [], [], [], []
    for optimizer in optimizers:
        for param in optimizer.param_groups[0]["params"]:
            if param.grad is not None:
                params.append(param)
                grads.append(param.grad)
                buffers.append(optimizer.state.get(param, {}).get("momentum_buffer"))
                owners.append(optimizer)
    sgd(params, grads, buffers, foreach=True, **settings)
    if settings["momentum"]:  # a buffer that did not exist yet was created in the list
        for optimizer, param, buffer in zip(owners, params, buffers, strict=True):
            optimizer.state[param]["momentum_buffer"] = buffer
