"""One optimizer step for a whole fused group.

Each member keeps its own optimizer (its state is what the member's checkpoints hold), but
stepping K optimizers one after another pays K times the per-call overhead (on a GPU, K times
the kernel launches) on tensors that are tiny.

GroupStep: when every member's optimizer is plain SGD with the same settings but perhaps its own
learning rate (a sweep of seeds and learning rates), the group steps the fused net's stacked
weights (src.fused.net.share) directly, SGD's update with a learning rate per member, its
momentum buffers stacked the same way (each member's optimizer state holds a view of its slice).
Otherwise step_all: members whose SGD settings are equal take one multi-tensor step over their
parameters (torch's own SGD update, torch.optim.sgd.sgd, foreach: bit for bit what their
SGD.step gives); other optimizers step alone, and so does every optimizer's first step: an LR
scheduler warns unless that one was taken by optimizer.step. (With nesterov, the multi-tensor
update leaves the momentum-added value in the gradient tensors; nothing reads them before the
next FusedConvNet.zero_grad.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.optim import SGD, Optimizer
from torch.optim.sgd import sgd

from src.fused.net import member_views

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


class GroupStep:
    """The optimizer step of a fused group whose weights are stacked (`shared`, from
    FusedConvNet): one SGD update over the stacked tensors when every optimizer can take it,
    else each optimizer's own (step_all), on the members' views of the same weights."""

    def __init__(self, shared: Sequence[tuple[Tensor, list[nn.Parameter]]], optimizers):
        self.shared, self.optimizers = list(shared), list(optimizers)
        self.buffers: list[Tensor] | None = None
        self.lrs: tuple[float, ...] = ()
        self.neg_lrs: list[Tensor] = []

    def __call__(self, first: Sequence[bool]) -> None:
        settings = None if any(first) else self._common_settings()
        if settings is None or (settings["momentum"] and not self._stack_buffers()):
            step_all(self.optimizers, first)
        else:
            self._step(settings)

    def _common_settings(self) -> dict | None:
        """The optimizers' SGD settings but lr, if all are plain SGD with equal ones."""
        found = {sgd_settings(optimizer) for optimizer in self.optimizers}
        if None in found or len({settings[1:] for settings in found}) != 1:
            return None
        settings = dict(zip(SGD_SETTINGS, found.pop(), strict=True))
        return None if settings["maximize"] else settings

    def _stack_buffers(self) -> bool:
        """Stack the members' momentum buffers like their weights (once, their states then
        hold views); False while a member has none yet."""
        if self.buffers is None:
            states = [
                [optimizer.state[p] for optimizer, p in zip(self.optimizers, params, strict=True)]
                for _, params in self.shared
            ]
            if any("momentum_buffer" not in s or s["momentum_buffer"] is None
                   for layer in states for s in layer):  # fmt: skip
                return False
            self.buffers = []
            for (leaf, _), layer in zip(self.shared, states, strict=True):
                stacked = torch.empty_like(leaf, requires_grad=False)
                own = [state["momentum_buffer"] for state in layer]
                for state, buffer, part in zip(layer, own, member_views(stacked, own), strict=True):
                    part.copy_(buffer)
                    state["momentum_buffer"] = part
                self.buffers.append(stacked)
        return True

    @torch.no_grad()
    def _step(self, settings: dict) -> None:
        """torch.optim.SGD's update (foreach) on the stacked weights, each member's rows at
        its own learning rate."""
        weights = [leaf for leaf, _ in self.shared]
        grads = [leaf.grad for leaf in weights]
        if settings["weight_decay"]:
            grads = torch._foreach_add(grads, weights, alpha=settings["weight_decay"])
        if settings["momentum"]:
            assert self.buffers is not None
            torch._foreach_mul_(self.buffers, settings["momentum"])
            torch._foreach_add_(self.buffers, grads, alpha=1 - settings["dampening"])
            if settings["nesterov"]:
                grads = torch._foreach_add(grads, self.buffers, alpha=settings["momentum"])
            else:
                grads = self.buffers
        torch._foreach_addcmul_(weights, grads, self._neg_lrs(weights))

    def _neg_lrs(self, weights: list[Tensor]) -> list[Tensor]:
        """Per stacked weight, minus each member's learning rate over its rows (broadcast).
        Rebuilt when a rate changes (a schedule: every step), without waiting for a GPU: the
        rates travel from pinned memory and are spread over each weight's rows on the device."""
        lrs = tuple(optimizer.param_groups[0]["lr"] for optimizer in self.optimizers)
        if lrs != self.lrs:
            k = len(lrs)
            device = weights[0].device
            neg = torch.tensor(lrs, dtype=weights[0].dtype, pin_memory=device.type == "cuda")
            neg = neg.neg_().to(device, non_blocking=True).view(k, 1)
            self.neg_lrs = [
                neg.expand(k, w.shape[0] // k).reshape(-1).view(-1, *[1] * (w.dim() - 1))
                for w in weights
            ]
            self.lrs = lrs
        return self.neg_lrs
