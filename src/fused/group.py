"""Training a fused group: K jobs of one network shape as one model, each member its own run.

A plain PyTorch loop rather than a Lightning fit: Lightning's loop trains one LightningModule
with its optimizers, while here each member must keep its own data order, augmentation draws,
dropout stream, optimizer, schedule, checkpoints and record, and a diverged member must leave
the group mid-epoch while the others go on. What a single run shares with it is reused: each
member is built by src.train (build_model, build_trainer, final_weights_rule, check_config),
its Trainer (never fitted) provides its TensorBoard logger and dashboards callbacks and tests
its best weights (trainer.test, so test metrics, per-class accuracy and pictures are a single
run's), and failures are recorded by src.recovery.record_failure.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.conf import HydraConf
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor

from src.checkpoint import read_checkpoint
from src.console import EPOCH_KEYS, layer_table, plain_text, results_table
from src.dashboards import HParamsSummary, ImageDashboards, tensorboard_writer
from src.data.augment import Draws, step_seed
from src.data.fetching import BatchCounters, Fetching
from src.data.loader import EpochShuffle, pixels_to_float
from src.devices import tune_backends
from src.errors import TrainingDiverged
from src.files import write_text
from src.fused.net import FusedConvNet, MemberRandom, fuse_inputs, side_by_side
from src.fused.optim import GroupStep
from src.models.convnet import count_parameters, layer_summary
from src.recovery import AtomicCheckpointIO, record_failure
from src.run_folder import RunRecord
from src.threads import set_threads

log = logging.getLogger(__name__)
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job log format


def hydra_node(cfg: DictConfig, out_dir: Path) -> DictConfig:
    """A config holding the member's own `hydra` node (its overrides, choices, output folder):
    from its config, else from the .hydra/hydra.yaml the launcher wrote, else the group's."""
    saved = out_dir / ".hydra" / "hydra.yaml"
    if "hydra" in cfg:
        node = copy.deepcopy(cfg)
    elif HydraConfig.initialized() and not saved.is_file():
        node = OmegaConf.create({"hydra": copy.deepcopy(HydraConfig.get())})
    elif saved.is_file():
        # Hydra's saved node holds keys its schema lacks (`env`): keep the schema's own.
        known = {field.name for field in dataclasses.fields(HydraConf)}
        loaded = OmegaConf.to_container(OmegaConf.load(saved).hydra, resolve=False)
        kept = {key: value for key, value in loaded.items() if key in known}
        node = OmegaConf.create({"hydra": OmegaConf.merge(OmegaConf.structured(HydraConf), kept)})
    else:
        return None
    OmegaConf.set_readonly(node.hydra, False)  # HydraConfig.set_config made it read-only
    with open_dict(node):
        node.hydra.runtime.output_dir = str(out_dir)
    return node


class Member:
    """One job of the group: its config, folder, network, optimizer, record and log."""

    def __init__(self, index: int, cfg: DictConfig, out_dir: Path):
        self.index, self.out_dir = index, Path(out_dir).absolute()
        self.hydra = hydra_node(cfg, self.out_dir)
        job = copy.deepcopy(cfg)
        with open_dict(job):
            job.pop("hydra", None)
            job.paths.output_dir = str(self.out_dir)
        with self.context():  # resolved in the member's own Hydra context, once
            self.cfg = OmegaConf.create(OmegaConf.to_container(job, resolve=True))
        self.status = "training"
        self.record: RunRecord | None = None
        self.start_epoch = 0
        self.global_step = 0
        self.log = self._file_logger()

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """Hydra's job context of this member (HParams' overrides, resume commands)."""
        instance = HydraConfig.instance()
        before = instance.cfg
        if self.hydra is not None:
            instance.set_config(self.hydra)
        try:
            yield
        finally:
            instance.cfg = before

    def _file_logger(self) -> logging.Logger:
        logger = logging.getLogger(f"src.fused.member.{id(self)}")
        logger.propagate, logger.level = False, logging.INFO
        self.out_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.out_dir / "train.log")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
        return logger

    def close_log(self) -> None:
        for handler in self.log.handlers[:]:
            handler.close()
            self.log.removeHandler(handler)

    def callback(self, kind: type) -> Any:
        return next((c for c in self.trainer.callbacks if isinstance(c, kind)), None)

    def build(self, dm, fused_with: int) -> None:
        """The member's net, trainer, optimizer and record, as src.training.train makes them."""
        from src.training import build_model, build_trainer, check_config, final_weights_rule

        cfg = self.cfg
        check_config(cfg)
        no_validation = final_weights_rule(cfg)
        self.trainer = build_trainer(cfg, **no_validation)
        self.validating = self.trainer.limit_val_batches != 0
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        self.model = build_model(cfg, dm)
        # Dropout draws from where the member's own run would (EpochSeed reseeds it per epoch).
        self.device = self.trainer.strategy.root_device
        self.random = MemberRandom(self.device)
        self.random.capture()
        self.params = count_parameters(self.model.net)
        self.smoothing = float(cfg.model.label_smoothing)
        self.writer = tensorboard_writer(self.trainer)
        checkpoint = cfg.get("callbacks", {}).get("model_checkpoint")
        self.monitor = checkpoint.monitor if checkpoint else None
        self.best_path = (
            Path(checkpoint.dirpath) / f"{checkpoint.filename}.ckpt" if checkpoint else None
        )
        resume = cfg.get("callbacks", {}).get("resume_checkpoint")
        self.last_path = Path(resume.path) if resume else None
        epoch_seed = next(
            (c for c in self.trainer.callbacks if type(c).__name__ == "EpochSeed"), None
        )
        self.epoch_seed = epoch_seed
        base = {"run_dir": str(self.out_dir), "model": cfg.model.name, "seed": cfg.seed}
        resumed = self.resume_from()
        self.record = RunRecord(
            self.out_dir / "metrics.json",
            status="running",
            **base,
            **({"resumed_from": str(resumed)} if resumed else {}),
            fused_members=fused_with,
        )
        write_text(self.out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    def resume_from(self) -> Path | None:
        """An earlier, killed group's last.ckpt of this member, if any (its weights are loaded
        here, its optimizer state in make_optimizer)."""
        self.resume_state = None
        if self.last_path is None or not self.last_path.is_file():
            return None
        state = read_checkpoint(self.last_path, ("state_dict", "loops"))
        self.model.load_state_dict(state["state_dict"])
        self.resume_state = state
        self.start_epoch = int(state["epoch"]) + 1
        self.global_step = int(state["global_step"])
        return self.last_path

    def make_optimizer(self, total_steps: int) -> None:
        model = self.model
        self.optimizer = model.optimizer_factory(params=model.parameters())
        self.scheduler = (
            model.scheduler_factory(optimizer=self.optimizer, total_steps=total_steps)
            if model.scheduler_factory
            else None
        )
        if self.resume_state is not None:
            self.optimizer.load_state_dict(self.resume_state["optimizer_states"][0])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(self.resume_state["lr_schedulers"][0])
            self.resume_state = None

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def checkpoint(self, epoch: int, fetching: Fetching) -> dict:
        """The member's state as a single run's Lightning checkpoint saved at an epoch's end:
        src.eval, src.predict, load_classifier and resume=true read it as one."""
        return {
            "epoch": epoch,
            "global_step": self.global_step,
            "pytorch-lightning_version": L.__version__,
            "state_dict": owned(self.model.state_dict()),
            "loops": epoch_end_loops(epoch, fetching.fetches, self.global_step),
            "callbacks": {},
            "optimizer_states": [owned(self.optimizer.state_dict())],
            "lr_schedulers": [self.scheduler.state_dict()] if self.scheduler else [],
            "hparams_name": "kwargs",
            "hyper_parameters": dict(self.model.hparams),
        }


def owned(value: Any) -> Any:
    """`value` with copies of its tensors: a member's weights and momentum buffers are views of
    the group's stacked ones, which torch.save would write whole, every member's in each file."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, dict):  # a copy keeps a state dict's _metadata (layer versions)
        kept = copy.copy(value)
        kept.update((key, owned(item)) for key, item in value.items())
        return kept
    if isinstance(value, list | tuple):
        return type(value)(owned(item) for item in value)
    return value


def epoch_end_loops(epoch: int, fetches: int, steps: int) -> dict:
    """Lightning's loop counters (2.x) as a single run saves them at the end of epoch `epoch`
    (ResumeCheckpoint's save in on_train_epoch_end): a resume starts the next epoch."""
    seen = (epoch + 1) * fetches
    batch = {"ready": seen, "completed": seen, "started": seen, "processed": seen}
    current = {"ready": fetches, "completed": fetches, "started": fetches, "processed": fetches}
    zero4 = {"ready": 0, "completed": 0, "started": 0, "processed": 0}
    zero_progress = {"total": zero4, "current": zero4, "is_last_batch": False}
    epochs = {"ready": epoch + 1, "completed": epoch, "started": epoch + 1, "processed": epoch + 1}
    step = {"ready": steps, "completed": steps}
    return {
        "fit_loop": {
            "state_dict": {"combined_loader": [{"epoch": epoch, "batches_yielded": fetches}]},
            "epoch_loop.state_dict": {"_batches_that_stepped": seen},
            "epoch_loop.batch_progress": {
                "total": batch,
                "current": current,
                "is_last_batch": True,
            },
            "epoch_loop.manual_optimization.optim_step_progress": {"total": step, "current": step},
            "epoch_loop.val_loop.batch_progress": zero_progress,
            "epoch_progress": {"total": epochs, "current": epochs},
        },
        "validate_loop": {"state_dict": {}, "batch_progress": zero_progress},
        "test_loop": {"state_dict": {}, "batch_progress": zero_progress},
        "predict_loop": {"state_dict": {}, "batch_progress": {"total": zero4, "current": zero4}},
    }


def member_losses(logits: Tensor, labels: Tensor, smoothing: list[float]) -> Tensor:
    """K x B cross-entropies of K x B x classes logits, each member with its label smoothing."""
    if len(set(smoothing)) == 1:
        flat = F.cross_entropy(
            logits.flatten(0, 1), labels.flatten(), label_smoothing=smoothing[0], reduction="none"
        )
        return flat.view(labels.shape)
    return torch.stack(
        [
            F.cross_entropy(out, y, label_smoothing=s, reduction="none")
            for out, y, s in zip(logits, labels, smoothing, strict=True)
        ]
    )


class SigtermFlag:
    """SIGTERM during the loop stops it at the next step, as Lightning's handler does a fit."""

    def __init__(self):
        self.received = False
        self.previous = None

    def __enter__(self) -> SigtermFlag:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._set)
        return self

    def _set(self, signum, frame) -> None:
        self.received = True

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def check(self) -> None:
        if self.received:
            raise SIGTERMException()


class Group:
    """The members training together: the fused net over them, built at every epoch and again
    when one leaves."""

    def __init__(self, members: list[Member]):
        self.members = members
        self.smoothing = [m.smoothing for m in members]
        if not members:  # every member has left (all diverged): the epoch loop stops at once
            self.net = self.step = self.mean = self.std = None
            return
        self.net = FusedConvNet([m.model.net for m in members])
        self.step = GroupStep(self.net.shared, [m.optimizer for m in members])
        # The members' normalisation (one data set's), repeated for their images side by side.
        k, model = len(members), members[0].model
        self.mean, self.std = model.mean.repeat(1, k, 1, 1), model.std.repeat(1, k, 1, 1)

    def without(self, gone: set[int]) -> Group:
        return Group([m for i, m in enumerate(self.members) if i not in gone])


def train_fused(members: list[Member]) -> None:
    """Train `members` (checked to be fusable, more than one) to the end, in this process."""
    started = time.perf_counter()
    cfg = members[0].cfg
    threads = set_threads(cfg.threads)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    for m in members:
        with m.context():
            m.build(dm, len(members))
    first = members[0]
    fetching = dm.plan_fetching(1, BatchCounters.of(first.trainer))
    max_epochs, max_steps = int(cfg.trainer.max_epochs), int(cfg.trainer.get("max_steps") or -1)
    total_steps = fetching.total_steps(max_epochs, max_steps)
    device = first.device
    tune_backends(device, bool(cfg.trainer.get("deterministic")))
    summary = layer_table(cfg.model.name, layer_summary(first.model.net, (3, 32, 32)), first.params)
    for m in members:
        m.model.to(device)  # first: a resumed optimizer's state goes where its parameters are
        m.make_optimizer(total_steps)
        m.log.info(
            "training %s (%d parameters) on %s, %d CPU threads, fused with %d other jobs of the "
            "same network shape; run folder %s",
            cfg.model.name, m.params, device, threads, len(members) - 1, m.out_dir,
        )  # fmt: skip
        m.log.info("%s", plain_text(summary))
        if m.start_epoch:
            m.log.info("resuming from %s (epoch %d done)", m.last_path, m.start_epoch)
        with m.context():
            if m.callback(HParamsSummary):
                m.callback(HParamsSummary).on_fit_start(m.trainer, m.model)
    log.info(
        "fused group of %d %s jobs on %s: %s",
        len(members), cfg.model.name, device, ", ".join(str(m.out_dir) for m in members),
    )  # fmt: skip
    on_device = dm.on_device and device.type != "cpu"
    images = dm.train_images.to(device) if on_device else dm.train_images
    labels = dm.train_labels.to(images.device)
    mean, std = first.model.mean, first.model.std
    precision = str(cfg.trainer.precision)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if precision == "bf16-mixed"
        else contextlib.nullcontext()
    )
    check_every = 1 if device.type == "cpu" else 20  # as StopOnDivergence: reading stalls a GPU
    size = fetching.batch_size
    with SigtermFlag() as sigterm:
        for epoch in range(min(m.start_epoch for m in members), max_epochs):
            if max_steps > 0 and all(m.global_step >= max_steps for m in members):
                break
            group = Group([m for m in members if m.status == "training" and m.start_epoch <= epoch])
            if not group.members:
                continue
            epoch_started = time.perf_counter()
            orders = []
            for m in group.members:
                if m.epoch_seed is not None:
                    m.random.seed(m.epoch_seed.epoch_seed(epoch, 0))
                shuffle = EpochShuffle(dm.train_idx, shuffle=True, seed=m.cfg.data.seed)
                shuffle.set_epoch(epoch)
                orders.append(shuffle.order()[: fetching.batches * size])
                m.scalars({f"lr-{type(m.optimizer).__name__}": m.lr()}, epoch * fetching.fetches)
            order = torch.stack(orders).to(images.device)
            finite = torch.ones(len(group.members), dtype=torch.bool, device=device)
            # Each member's summed training loss and correct count (rows follow group.members).
            sums = torch.zeros(len(group.members), 2, dtype=torch.float64, device=device)
            seen = 0
            for step in range(fetching.batches):
                if max_steps > 0 and group.members[0].global_step >= max_steps:
                    break
                k = len(group.members)
                idx = order[:, step * size : (step + 1) * size]
                b = idx.shape[1]
                pixels = images[idx].to(device)  # K x B x H x W x C, uint8
                first_batch = epoch == group.members[0].start_epoch and step == 0
                augmenting = dm.augment_fn is not None
                # The members' images one after another, as their own runs see them.
                each = (
                    pixels_to_float(pixels.flatten(0, 1), hwc=True)
                    if augmenting or first_batch
                    else None
                )
                if augmenting:
                    seeds = [
                        step_seed(m.cfg.data.augment_seed, 0, epoch, step) for m in group.members
                    ]
                    each = dm.augment_fn(each, Draws(len(each), device, seeds, b))
                    x = fuse_inputs((each - mean) / std, k)
                else:  # side by side before the float conversion: a quarter of the bytes moved
                    x = (pixels_to_float(side_by_side(pixels)) - group.mean) / group.std
                if first_batch:
                    for m, part in zip(group.members, each.split(b), strict=True):
                        if m.callback(ImageDashboards):
                            m.callback(ImageDashboards).on_train_batch_end(
                                m.trainer, m.model, None, (part, None), 0
                            )
                y = labels[idx].to(device)
                with autocast:
                    logits = group.net(x, [m.random for m in group.members])
                losses = member_losses(logits, y, group.smoothing)
                group.net.zero_grad()
                losses.mean(1).sum().backward()
                with torch.no_grad():
                    correct = (logits.argmax(2) == y).sum(1)
                    step_losses = losses.detach()
                # A fresh member's first step (a resumed one has its scheduler's count).
                group.step([m.global_step == 0 for m in group.members])
                for m in group.members:
                    if m.scheduler is not None:
                        m.scheduler.step()
                    m.global_step += 1
                sums[:, 0] += step_losses.sum(1)
                sums[:, 1] += correct
                seen += b
                finite &= torch.isfinite(step_losses).all(1)
                if step % check_every == 0 or step == fetching.batches - 1:
                    group, keep = drop_diverged(group, finite, step_losses, epoch, started)
                    if len(keep) < len(order):
                        order, finite, sums = order[keep], finite[keep], sums[keep]
                    if not group.members:
                        break
                sigterm.check()
            for m, (loss_sum, correct_sum) in zip(group.members, sums.tolist(), strict=True):
                m.sums = (loss_sum, correct_sum, seen)
                m.epoch_s = time.perf_counter() - epoch_started
            end_epoch(group, dm, epoch, time.perf_counter() - epoch_started, fetching, autocast)
    for m in members:
        if m.status == "training":
            finish(m, dm, fetching, max_epochs, started)


def drop_diverged(
    group: Group, finite: Tensor, losses: Tensor, epoch: int, started: float
) -> tuple[Group, list[int]]:
    """Record as diverged, and drop, every member whose loss is no longer finite; returns the
    group of the others and their indices in the old one (their rows of the epoch's tensors)."""
    bad = {i for i, ok in enumerate(finite.tolist()) if not ok}
    if not bad:
        return group, list(range(len(group.members)))
    for i in sorted(bad):
        m = group.members[i]
        err = TrainingDiverged(
            f"training diverged: the loss became {float(losses[i].sum()):g} by epoch {epoch}, "
            f"step {m.global_step}, with optimizer.lr={m.cfg.optimizer.lr:g} (the schedule's "
            f"rate at that step: {m.lr():.3g}); lower optimizer.lr"
        )
        fail(m, err, started)
        log.warning("%s: %s; the other members go on", m.out_dir, err)
    keep = [i for i in range(len(group.members)) if i not in bad]
    return group.without(bad), keep


def fail(m: Member, err: BaseException, started: float) -> None:
    """Record how member `m` ended (failed, diverged, interrupted), as src.train does."""
    m.status = "failed"
    with m.context():
        if m.record is None:
            base = {"run_dir": str(m.out_dir), "model": m.cfg.model.name, "seed": m.cfg.seed}
            m.record = RunRecord(m.out_dir / "metrics.json", status="failed", **base)
        record_failure(m.record, err, m.cfg, time.perf_counter() - started)
        if hasattr(m, "trainer") and m.callback(HParamsSummary):
            m.callback(HParamsSummary).on_exception(m.trainer, m.model, err)
    m.log.error("%s", m.record.data.get("error", err))
    m.status = m.record.data["status"]


def validate(group: Group, dm, autocast) -> list[tuple[float, Tensor]]:
    """Each member's (mean validation loss, confusion matrix), from one fused pass."""
    k, n = len(group.members), dm.num_classes
    device = group.members[0].device
    mean, std = group.members[0].model.mean, group.members[0].model.std
    loss_sum = torch.zeros(k, dtype=torch.float64, device=device)
    confusion = torch.zeros(k, n * n, dtype=torch.long, device=device)
    count = 0
    limit = group.members[0].trainer.limit_val_batches
    loader = dm.val_dataloader()
    batches = len(loader) if isinstance(limit, float) else min(len(loader), limit)
    if isinstance(limit, float) and limit < 1:
        batches = max(1, int(len(loader) * limit))
    group.net.train(False)
    try:
        with torch.inference_mode():
            for i, (images, labels) in enumerate(loader):
                if i >= batches:
                    break
                x = (pixels_to_float(images.to(device)) - mean) / std
                labels = labels.to(device)
                with autocast:
                    logits = group.net(x.repeat(1, k, 1, 1))
                every = labels.expand(k, -1)
                loss_sum += member_losses(logits, every, group.smoothing).double().sum(1)
                cells = every * n + logits.argmax(2)
                confusion += F.one_hot(cells, n * n).sum(1)
                count += len(labels)
    finally:
        group.net.train(True)
    return [
        (float(s) / max(count, 1), c.view(n, n).cpu())
        for s, c in zip(loss_sum, confusion, strict=True)
    ]


def end_epoch(group: Group, dm, epoch: int, epoch_s: float, fetching: Fetching, autocast) -> None:
    """What a single run does at an epoch's end, for each member: validation, the epoch's
    scalars and log line, best/final checkpoint, last.ckpt."""
    if not group.members:
        return
    step = (epoch + 1) * fetching.fetches - 1
    every_n = group.members[0].trainer.check_val_every_n_epoch or 1
    validating = group.members[0].validating and (epoch + 1) % every_n == 0
    results = validate(group, dm, autocast) if validating else [None] * len(group.members)
    io = AtomicCheckpointIO()
    for m, result in zip(group.members, results, strict=True):
        loss, correct, seen = m.sums
        values = {
            "train/loss": loss / max(seen, 1),
            "train/acc": correct / max(seen, 1) * 100,
            "epoch": float(epoch),
            "time/epoch_s": epoch_s,
            "time/train_images_per_s": seen / max(epoch_s, 1e-9),
        }
        improved = m.monitor is None
        if result is not None:
            val_loss, confusion = result
            acc = float(confusion.diag().sum() / confusion.sum().clamp(min=1) * 100)
            if acc > float(m.model.val_acc_best):
                m.model.val_acc_best.fill_(acc)
                m.model.val_confusion_best = confusion
                improved = True
            values.update({"val/loss": val_loss, "val/acc": acc})
            values["val/acc_best"] = float(m.model.val_acc_best)
            per_class = confusion.diag() / confusion.sum(1).clamp(min=1) * 100
            for name, v in zip(m.model.class_names, per_class.tolist(), strict=True):
                values[f"val/acc_class/{name}"] = v
        m.scalars(values, step)
        of = f"/{m.cfg.trainer.max_epochs}"
        line = ", ".join(f"{key} {values[key]:.4g}" for key in EPOCH_KEYS if key in values)
        m.log.info("epoch %d%s: %s", epoch + 1, of, line)
        checkpoint = m.checkpoint(epoch, fetching)
        if m.best_path is not None and improved:
            io.save_checkpoint(checkpoint, m.best_path)
        if m.last_path is not None:
            io.save_checkpoint(checkpoint, m.last_path)
    first = group.members[0]
    log.info("epoch %d/%d of a fused group of %d: %.1f s", epoch + 1, first.cfg.trainer.max_epochs,
             len(group.members), epoch_s)  # fmt: skip


def finish(m: Member, dm, fetching: Fetching, epochs: int, started: float) -> None:
    """Test the member's best (or final) weights through its Trainer, and record the run."""
    with m.context():
        images = m.callback(ImageDashboards)
        hparams = m.callback(HParamsSummary)
        if images:
            images.on_fit_end(m.trainer, m.model)
        if hparams:
            hparams.on_fit_end(m.trainer, m.model)
        val_acc_best = float(m.model.val_acc_best)
        best = m.best_path if m.best_path is not None and m.best_path.is_file() else None
        if best is not None:
            m.model.load_state_dict(read_checkpoint(best)["state_dict"])
        # Test scalars at the run's last step, as in a single run (Lightning logs at its count).
        m.trainer.fit_loop.epoch_loop._batches_that_stepped = epochs * fetching.fetches
        m.trainer.fit_loop.epoch_progress.current.completed = epochs
        test = m.trainer.test(m.model, datamodule=dm, verbose=False)[0]
        metrics = {
            "status": "finished",
            "val/acc_best": round(val_acc_best, 4) if math.isfinite(val_acc_best) else None,
            "test/acc": round(test["test/acc"], 4),
            "test/loss": round(test["test/loss"], 4),
            "test/acc_per_class": m.model.test_results["acc_per_class"],
            "params": m.params,
            "epochs": epochs,
            "epoch_time_s": round(m.epoch_s, 2) if hasattr(m, "epoch_s") else None,
            "wall_time_s": round(time.perf_counter() - started, 2),
            "best_checkpoint": str(best or ""),
        }
        m.record.update(**metrics)
        m.status = "finished"
        m.log.info("%s", plain_text(results_table(m.record.data)))
