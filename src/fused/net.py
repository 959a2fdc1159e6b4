"""K same-shape ConvNets run as one network (horizontal fusion, as in HFTA, MLSys 2021).

The members' inputs lie side by side as channels (B x K*3 x H x W): each conv layer is one
grouped convolution (groups=K) over the members' channels, each linear layer one batched matrix
multiply (baddbmm) over a K x in x out stack; ReLU and max-pool are per channel, so per member
already; batch norm over the concatenated channels is per member by construction. The output is
K x B x classes.

The members' weights are stacked once per group into one leaf tensor per layer and weight (what
the fused layer computes with), and each member's own parameter becomes a view of its slice,
its gradient a view of the leaf's gradient: the members' optimizers, state dicts and checkpoints
stay those of single networks, while a step concatenates no weights (batch norm's running
statistics still are) and its backward accumulates into a few stacked gradients instead of K
times as many small ones (HFTA fuses the parameters the same way).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src.errors import ConfigError

WEIGHTED = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)
SUPPORTED = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.Dropout, nn.Flatten, nn.Linear)


class MemberRandom:
    """One member's stream of dropout randomness: the state torch's global generators would
    have in the member's own run. Its dropout is drawn by F.dropout itself (the same call as
    the unfused net's) with the member's state swapped in, so the masks are the unfused run's
    on the CPU and on a GPU alike."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.state: dict[str, Any] = {}

    def seed(self, seed: int) -> None:
        """The member's state after torch.manual_seed(seed) (what EpochSeed does each epoch)."""
        with torch.random.fork_rng(devices=self._devices()):
            torch.manual_seed(seed)
            self.capture()

    def capture(self) -> None:
        """Take over the global generators' current state."""
        self.state = {"cpu": torch.get_rng_state()}
        if self.cuda:
            self.state["cuda"] = torch.cuda.get_rng_state()

    def _devices(self) -> list[int]:
        return [torch.cuda.current_device()] if self.cuda else []

    def dropout(self, x: Tensor, p: float) -> Tensor:
        with torch.random.fork_rng(devices=self._devices()):
            torch.set_rng_state(self.state["cpu"])
            if self.cuda:
                torch.cuda.set_rng_state(self.state["cuda"])
            out = F.dropout(x, p, training=True)
            self.capture()
        return out


class FusedConvNet:
    """The fused forward pass of `nets` (src.models.ConvNet, all of one shape).

    Takes the members' weights over (`shared`: each layer's stacked leaf tensors, the members'
    parameters views of them) so that their optimizers step the fused weights. train_fused
    builds one at every epoch and when a member leaves (diverged), stacking the members'
    current weights anew.
    """

    def __init__(self, nets: Sequence[nn.Module]):
        self.nets = list(nets)
        self.k = len(self.nets)
        layers = [list(net.features) + list(net.classifier) for net in self.nets]
        shapes = {tuple(_signature(m) for m in member) for member in layers}
        if len(shapes) != 1:
            raise ConfigError("fused members must build the same network shape")
        for module in layers[0]:
            if not isinstance(module, SUPPORTED):
                raise ConfigError(f"a fused network cannot hold {type(module).__name__} layers")
        self.layers = list(zip(*layers, strict=True))
        # Per layer, its stacked weights by name; `shared` lists each with the members' own.
        self.weights: list[dict[str, Tensor]] = []
        self.shared: list[tuple[Tensor, list[nn.Parameter]]] = []
        for mods in self.layers:
            stacked = {}
            for name in ("weight", "bias"):
                if isinstance(mods[0], WEIGHTED) and getattr(mods[0], name) is not None:
                    params = [getattr(m, name) for m in mods]
                    stacked[name] = share(params, along_rows=not isinstance(mods[0], nn.Linear))
                    self.shared.append((stacked[name], params))
            self.weights.append(stacked)
        self.training = True

    def zero_grad(self) -> None:
        """Zero the stacked gradients, and so every member's (views of them)."""
        torch._foreach_zero_([leaf.grad for leaf, _ in self.shared])

    def train(self, mode: bool = True) -> FusedConvNet:
        self.training = mode
        for net in self.nets:
            net.train(mode)
        return self

    def __call__(self, x: Tensor, randoms: Sequence[MemberRandom] = ()) -> Tensor:
        """x: B x K*C x H x W (member k: channels k*C..(k+1)*C); returns K x B x classes."""
        k = self.k
        for mods, stacked in zip(self.layers, self.weights, strict=True):
            first = mods[0]
            if isinstance(first, nn.Conv2d):
                weight, bias = stacked["weight"], stacked.get("bias")
                x = F.conv2d(x, weight, bias, first.stride, first.padding, first.dilation, k)
            elif isinstance(first, nn.BatchNorm2d):
                x = self._batch_norm(x, mods, stacked)
            elif isinstance(first, nn.ReLU):
                x = F.relu(x)
            elif isinstance(first, nn.MaxPool2d):
                x = F.max_pool2d(
                    x, first.kernel_size, first.stride, first.padding, first.dilation,
                    ceil_mode=first.ceil_mode,
                )  # fmt: skip
            elif isinstance(first, nn.Dropout):
                if self.training and first.p > 0:
                    x = self._dropout(x, first.p, randoms)
            elif isinstance(first, nn.Flatten):
                x = x.reshape(x.shape[0], k, -1).transpose(0, 1)  # K x B x features
            elif isinstance(first, nn.Linear):
                # Stacked K x out x in and K x out: K x B x in @ K x in x out + K x 1 x out.
                weight, bias = stacked["weight"].transpose(1, 2), stacked["bias"].unsqueeze(1)
                x = torch.baddbmm(bias, x, weight)
        return x

    def _batch_norm(
        self, x: Tensor, mods: Sequence[nn.BatchNorm2d], stacked: dict[str, Tensor]
    ) -> Tensor:
        first = mods[0]
        training = self.training
        mean = torch.cat([m.running_mean for m in mods])
        var = torch.cat([m.running_var for m in mods])
        weight, bias = stacked.get("weight"), stacked.get("bias")
        out = F.batch_norm(x, mean, var, weight, bias, training, first.momentum, first.eps)
        if training:  # F.batch_norm updated the concatenated statistics: give each its own
            with torch.no_grad():
                for m, m_mean, m_var in zip(
                    mods, mean.chunk(self.k), var.chunk(self.k), strict=True
                ):
                    m.running_mean.copy_(m_mean)
                    m.running_var.copy_(m_var)
                    m.num_batches_tracked.add_(1)
        return out

    def _dropout(self, x: Tensor, p: float, randoms: Sequence[MemberRandom]) -> Tensor:
        if len(randoms) != self.k:
            raise ValueError(f"{len(randoms)} dropout streams for {self.k} members")
        # Each member's part, laid out as in its own net (contiguous), through its own stream.
        if x.dim() == 4:
            layout = memory_format(x)
            parts = [part.contiguous(memory_format=layout) for part in x.chunk(self.k, dim=1)]
            masked = [r.dropout(part, p) for r, part in zip(randoms, parts, strict=True)]
            return torch.cat(masked, 1).contiguous(memory_format=layout)
        return torch.stack([r.dropout(x[i], p) for i, r in enumerate(randoms)])


def share(params: Sequence[nn.Parameter], along_rows: bool) -> Tensor:
    """One leaf tensor (with a zero gradient) holding the members' `params`, concatenated along
    their first dimension (`along_rows`: a grouped convolution's or batch norm's channels, in the
    members' memory format) or stacked (K x out x in for a batched matrix multiply). Each
    parameter becomes a view of its slice, and its gradient a view of the leaf's gradient, which
    backward accumulates into in place; zero_grad must zero the leaf's (FusedConvNet.zero_grad):
    a member's own optimizer.zero_grad would unlink its gradient."""
    with torch.no_grad():
        joined = torch.cat(list(params)) if along_rows else torch.stack(list(params))
    leaf = joined.detach().requires_grad_(True)
    leaf.grad = torch.zeros_like(leaf)
    parts, grads = member_views(leaf.detach(), params), member_views(leaf.grad, params)
    for param, part, grad in zip(params, parts, grads, strict=True):
        param.data, param.grad = part, grad
    return leaf


def member_views(stacked: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Each member's slice of a stacked tensor, shaped as that member's own tensor in `like`."""
    return [part.view(t.shape) for part, t in zip(stacked.chunk(len(like)), like, strict=True)]


def _signature(module: nn.Module) -> tuple:
    """What must match between members' layers for them to fuse."""
    shapes = tuple(tuple(t.shape) for t in module.state_dict().values())
    return (type(module).__name__, shapes, repr(module))


def memory_format(x: Tensor) -> torch.memory_format:
    """The layout of a batch: images as the loader hands them out (permuted from the cache's
    N x H x W x C) are channels-last, and so is everything a network computes from them."""
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def fuse_inputs(images: Tensor, k: int) -> Tensor:
    """K*B x C x H x W (member after member) -> B x K*C x H x W (members side by side), in the
    layout of `images`: a member's dropout masks are drawn in its own run's memory order, and
    its convolutions and batch norm then add up in the same order too."""
    kb, c, h, w = images.shape
    fused = images.reshape(k, kb // k, c, h, w).transpose(0, 1).reshape(kb // k, k * c, h, w)
    return fused.contiguous(memory_format=memory_format(images))


def side_by_side(pixels: Tensor) -> Tensor:
    """K x B x H x W x C images (member after member, as cached) -> B x K*C x H x W in the
    channels-last layout: fuse_inputs of the same images permuted to channels first."""
    k, b, h, w, c = pixels.shape
    return pixels.permute(1, 2, 3, 0, 4).reshape(b, h, w, k * c).permute(0, 3, 1, 2)
