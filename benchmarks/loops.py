"""The three training loops compared: the seeds' loop, a plain loop, and cifar10-lab itself.

The seeds' loop and the plain loop are generators that yield after every optimizer step, so one
clock (`common.step_times`) or an accuracy probe can drive them. cifar10-lab runs through its
own Lightning Trainer, with a callback that reads the clock after every batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.utils.data import DataLoader

from benchmarks.common import compose_train, load_data
from src.data import CIFAR10DataModule
from src.data.fetching import Fetching
from src.data.loader import EpochShuffle, TensorBatchLoader, pixels_to_float
from src.threads import set_threads
from src.training import build_model, build_trainer

# The seed recipe (the PyTorch tutorial): SGD 0.001 with momentum 0.9, constant, no decay.
SEED_RECIPE = (
    "optimizer=sgd",
    "optimizer.lr=0.001",
    "optimizer.momentum=0.9",
    "optimizer.weight_decay=0",
    "scheduler=none",
    "data.augment=none",
    "data.normalize=seed",
)


def seeds_loader(cfg: DictConfig, batch_size: int = 4, workers: int = 2) -> DataLoader:
    """The tutorial's input pipeline: a torchvision image data set decoded and transformed per
    sample (ToTensor, Normalize 0.5/0.5) by a DataLoader with 2 worker processes."""
    from torchvision import datasets, transforms

    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
    )
    root = Path(cfg.data.root).expanduser()
    if cfg.data.source == "folder":
        dataset = datasets.ImageFolder(str(root / "train"), transform=transform)
    else:
        dataset = datasets.CIFAR10(str(root), train=True, download=False, transform=transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)


def seeds_steps(
    net: nn.Module, loader: DataLoader, epochs: int = 1, lr: float = 0.001
) -> Iterator[None]:
    """The tutorial's training loop, step for step (running loss read with .item() included);
    seed 000's width study is the same loop with its own `lr`."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    net.train()
    for _ in range(epochs):
        running_loss = 0.0
        for inputs, labels in loader:
            optimizer.zero_grad()
            loss = criterion(net(inputs), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            yield


def memory_loader(dm: CIFAR10DataModule, batch_size: int, seed: int = 0) -> TensorBatchLoader:
    """cifar10-lab's training batches: uint8 views indexed from the whole-split tensors."""
    sampler = EpochShuffle(dm.train_idx, shuffle=True, seed=seed)
    fetching = Fetching.plan(len(sampler), batch_size)  # a batch at a time
    return TensorBatchLoader(dm.train_images, dm.train_labels, sampler, fetching)


def plain_steps(
    net: nn.Module,
    loader: TensorBatchLoader,
    epochs: int = 1,
    lr: float = 0.001,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
) -> Iterator[None]:
    """A plain PyTorch loop over cifar10-lab's in-memory batches: the ceiling for any framework."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    net.train()
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for images, labels in loader:
            x = (pixels_to_float(images) - mean_t) / std_t
            loss = F.cross_entropy(net(x), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            yield


class BatchClock(L.Callback):
    """Seconds per optimizer step after the first `warmup` optimizer steps (to the epoch's last
    training batch), by `clock` (wall time; time.process_time for the process's CPU time, all
    threads).

    A training batch of Lightning's loop may hold several optimizer steps (a fetch, see
    src.data.fetching), so steps are counted by trainer.global_step, and the clock starts at the
    end of the fetch that completes the warmup. It is read at two batch ends only; on a GPU it
    waits for the device there, so the batches between keep overlapping host and device work as
    in a real run.
    """

    def __init__(self, warmup: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.warmup, self.clock = warmup, clock
        self.start: tuple[float, int] | None = None
        self.per_step: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        last = batch_idx + 1 == trainer.num_training_batches
        starts = self.start is None and trainer.global_step >= self.warmup and not last
        if not starts and not last:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        now = self.clock()
        if starts:
            self.start = (now, trainer.global_step)
        elif self.start is not None:
            self.per_step = (now - self.start[0]) / (trainer.global_step - self.start[1])


def lab_step_time(
    overrides: Sequence[str],
    warmup: int,
    timed: int,
    output_dir: Path,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Seconds per optimizer step of `python -m src.train <overrides>` (cifar10-lab itself).

    The run is the user's run (its config, callbacks, logger and progress bar), cut to at
    least warmup + timed steps, in whole fetches for each; validation and checkpoints fall
    outside the timed steps, so they are switched off.
    """
    cfg = compose_train(
        [
            *overrides,
            "trainer.max_epochs=1",
            "~callbacks.model_checkpoint",
            "~callbacks.resume_checkpoint",
        ],
        output_dir,
    )
    L.seed_everything(cfg.seed, verbose=False)
    set_threads(cfg.threads)
    dm = load_data(cfg)
    model = build_model(cfg, dm)
    per_fetch = dm.fetching.per_fetch

    def whole(steps: int) -> int:  # rounded up to whole fetches
        return -(-steps // per_fetch) * per_fetch

    clock = BatchClock(whole(warmup), clock)
    trainer = build_trainer(
        cfg,
        [clock],
        limit_train_batches=whole(warmup) + whole(timed),  # batches, as in Lightning
        limit_val_batches=0,
        enable_checkpointing=False,
    )
    trainer.fit(model, datamodule=dm)
    if clock.per_step is None:
        raise ValueError(f"fewer than {warmup} + {timed} training steps in one epoch")
    return clock.per_step


def evaluate(net: nn.Module, images: Tensor, labels: Tensor, mean, std, batch: int = 1000) -> float:
    """Test accuracy in percent, the way cifar10-lab's Classifier normalises inputs."""
    mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    was_training = net.training
    net.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(labels), batch):
            x = pixels_to_float(images[start : start + batch], hwc=True)
            logits = net((x - mean_t) / std_t)
            correct += int((logits.argmax(1) == labels[start : start + batch]).sum())
    net.train(was_training)
    return 100 * correct / len(labels)
