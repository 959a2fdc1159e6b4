"""A 2-rank DDP training run on the CPU (gloo) that records what each rank saw.

python tests/ddp_probe.py DATA_ROOT OUT_DIR: Lightning starts rank 1 by re-running this command.
Each rank writes OUT_DIR/rank<r>.json; the test (tests/test_gpu_ready.py) reads them.
"""

from __future__ import annotations

import hashlib
import json
import sys
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.strategies import DDPStrategy  # noqa: E402

from src.callbacks import EpochSeed  # noqa: E402
from src.data import CIFAR10DataModule  # noqa: E402
from src.models import Classifier  # noqa: E402
from src.models.convnet import ConvNet  # noqa: E402
from src.recovery import ResumeCheckpoint  # noqa: E402

BATCH = 8  # the global batch: 4 images per rank and step


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


class Recorder(L.Callback):
    """Per rank: every step's (epoch, mean loss, images), the dropout generator's state after
    the epoch seed, and the numbers the augmentation draws for the first fetch."""

    def __init__(self):
        self.steps: list[tuple[int, float, int]] = []
        self.rng: list[str] = []
        self.augment: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.rng.append(digest(torch.get_rng_state()))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.augment:  # drawn as the data module draws them, without using them up
            draws = trainer.datamodule._draws(len(batch[1]), torch.device("cpu"))
            self.augment = draws.rand().tolist()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # One optimizer step per fetch here, so `outputs` is that step's mean loss.
        self.steps.append((trainer.current_epoch, float(outputs["loss"]), len(batch[1])))


def main(data_root: str, out_dir: str) -> None:
    out = Path(out_dir)
    torch.manual_seed(0)
    dm = CIFAR10DataModule(
        source="folder",
        root=data_root,
        cache_dir=str(out / "cache"),
        batch_size=BATCH,
        fetch_size=BATCH,  # one optimizer step per fetch, so each step's loss is seen
        val_size=12,
        eval_batch_size=16,
        augment="flip_crop",
        augment_seed=3,
    )
    dm.prepare_data()
    dm.setup("fit")
    net = ConvNet(channels=[4], kernel_size=3, dropout=0.5, hidden=[16], num_classes=3)
    model = Classifier(
        net=net,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05),
        class_names=dm.classes,
    )
    recorder = Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=60)),
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[EpochSeed(seed=5), recorder, ResumeCheckpoint(str(out / "last.ckpt"))],
    )
    trainer.fit(model, datamodule=dm)
    rank = trainer.global_rank
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    record = {
        "rank": rank,
        "world_size": trainer.world_size,
        "global_step": trainer.global_step,
        "steps": recorder.steps,
        "rng": recorder.rng,
        "augment": recorder.augment,
        "params": digest(params),
        "train_loss": float(trainer.callback_metrics["train/loss"]),
        "train_acc": float(trainer.callback_metrics["train/acc"]),
        "steps_per_epoch_single_device": -(-len(dm.train_idx) // BATCH),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(*sys.argv[1:3])
