"""The GPU and DDP paths, as far as the CPU can show them (issue 11; docs/gpu.md).

The DDP run is 2 ranks over gloo (tests/ddp_probe.py); the rest takes stated device counts and
compute capabilities instead of real GPUs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from types import SimpleNamespace
from unittest import mock

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader, TensorDataset

from hydra_plugins.cifar10_lab_launcher.slots import plan_slots, resolve_devices
from src import devices
from src.callbacks import EpochSeed
from src.data.augment import Draws, get_augment
from src.models import Classifier
from src.models.convnet import ConvNet
from src.recovery import ResumeCheckpoint
from tests.conftest import ROOT, compose_config, make_folder_tree, tiny_overrides
from tests.test_data import datamodule, fake_trainer

# -- lead 1, 6, 8: a real 2-rank DDP run --------------------------------------------------------


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """Both ranks' records of a 2-epoch, 2-rank run (about 25 s on 2 cores)."""
    import subprocess

    tmp = tmp_path_factory.mktemp("ddp")
    data = make_folder_tree(tmp / "data")
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "ddp_probe.py"), str(data), str(tmp / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    return ranks, tmp / "out" / "last.ckpt"


@pytest.mark.slow
def test_ddp_train_metrics_are_the_mean_over_every_rank(ddp_run):
    ranks, _ = ddp_run
    last_epoch = [s for rank in ranks for s in rank["steps"] if s[0] == 1]
    expected = sum(loss * n for _, loss, n in last_epoch) / sum(n for *_, n in last_epoch)
    rank0_only = [s for s in ranks[0]["steps"] if s[0] == 1]
    rank0_loss = sum(loss * n for _, loss, n in rank0_only) / sum(n for *_, n in rank0_only)
    # The shards' losses differ by far more than the tolerance, so the test can tell them apart.
    assert abs(expected - rank0_loss) > 10 * 1e-6 * expected
    for rank in ranks:
        assert rank["train_loss"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_ddp_ranks_draw_their_own_randomness_and_the_checkpoint_keeps_each_state(ddp_run):
    ranks, checkpoint = ddp_run
    assert ranks[0]["rng"][0] != ranks[1]["rng"][0], "dropout: one stream per rank"
    assert ranks[0]["augment"] != ranks[1]["augment"], "augmentation: one stream per rank"
    assert ranks[0]["params"] == ranks[1]["params"], "the gradients are still averaged"
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["callbacks"]
    saved = next(v for k, v in state.items() if k.startswith("EpochSeed"))["ranks"]
    assert len(saved) == 2 and not torch.equal(saved[0]["cpu"], saved[1]["cpu"])


@pytest.mark.slow
def test_ddp_batch_size_is_the_global_batch(ddp_run):
    """trainer=ddp keeps the recipe: data.batch_size=8 over 2 ranks is 4 images per rank and
    step, and an epoch has the steps of a single-device run."""
    ranks, _ = ddp_run
    for rank in ranks:
        # 54 images per rank: 13 steps of 4 and one of 2 (108 on one device: 13 of 8, one of 4).
        assert [n for *_, n in rank["steps"]] == ([4] * 13 + [2]) * 2
        assert rank["global_step"] == 2 * rank["steps_per_epoch_single_device"] == 28


def test_a_global_batch_that_does_not_split_over_the_ranks_is_a_config_error(folder_data, tmp_path):
    from src.errors import ConfigError

    dm = datamodule(folder_data, tmp_path, batch_size=9)
    with pytest.raises(ConfigError, match="data.batch_size=9 .* multiple of 2"):
        dm.plan_fetching(world_size=2)


def test_epoch_seed_folds_in_the_rank_and_resumes_each_rank_from_its_own_state():
    callback = EpochSeed(seed=5)
    assert callback.epoch_seed(3, 0) == 5 * 1_000_003 + 4  # a single device: as before
    assert callback.epoch_seed(3, 1) != callback.epoch_seed(3, 0)
    states = [{"cpu": torch.manual_seed(r).get_state()} for r in (10, 11)]
    callback.load_state_dict({"ranks": states})
    callback.on_train_start(SimpleNamespace(global_rank=1), None)
    assert torch.equal(torch.get_rng_state(), states[1]["cpu"])
    callback.load_state_dict(states[0])  # a checkpoint from before ranks were kept
    callback.on_train_start(SimpleNamespace(global_rank=0), None)
    assert torch.equal(torch.get_rng_state(), states[0]["cpu"])


# -- lead 9: data.fetch_size does not change augmented batches -----------------------------------


@pytest.mark.parametrize("preset", ["flip_crop", "seed004"])
def test_augmented_batches_do_not_depend_on_fetch_size(preset, folder_data, tmp_path):
    def epoch(fetch_size: int, rank: int = 0) -> torch.Tensor:
        dm = datamodule(folder_data, tmp_path, batch_size=4, fetch_size=fetch_size, augment=preset)
        out = []
        for i, batch in enumerate(dm.train_dataloader()):
            dm.trainer = fake_trainer(fetches_done=i, epoch=1, rank=rank)
            out.append(dm.on_after_batch_transfer(batch, 0)[0])
        return torch.cat(out)

    one_at_a_time = epoch(4)
    assert torch.equal(epoch(12), one_at_a_time)  # 3 batches a fetch
    assert torch.equal(epoch(1024), one_at_a_time)  # the whole epoch in one fetch
    assert not torch.equal(epoch(4, rank=1), one_at_a_time)


@pytest.mark.slow
def test_fetch_size_does_not_change_an_augmented_run(folder_data, tmp_path):
    from tests.conftest import run_cli

    results = []
    for fetch in (8, 24):
        run = tmp_path / f"fetch{fetch}"
        done = run_cli(
            "src.train",
            *tiny_overrides(tmp_path, folder_data),
            "data.augment=seed004",
            f"data.fetch_size={fetch}",
            "model.dropout=0.3",  # dropout draws from the global generator
            f"hydra.run.dir={run}",
        )
        assert done.returncode == 0, done.stderr[-3000:]
        metrics = json.loads((run / "metrics.json").read_text())
        results.append((metrics["val/acc_best"], metrics["test/loss"]))
    assert results[0] == results[1]


def test_draws_are_one_stream_per_batch():
    fetch = Draws(6, torch.device("cpu"), seeds=[1, 2, 3], batch_size=2).rand()
    alone = Draws(2, torch.device("cpu"), seeds=[2], batch_size=2).rand()
    assert torch.equal(fetch[2:4], alone)
    torch.manual_seed(0)
    assert get_augment("flip")(torch.rand(4, 3, 8, 8)).shape == (4, 3, 8, 8)  # global stream


# -- lead 3: the precision from the compute capability, without starting CUDA -------------------


@pytest.mark.parametrize(
    ("capability", "precision"),
    [(None, "32-true"), ((7, 0), "16-mixed"), ((7, 5), "16-mixed"), ((8, 0), "bf16-mixed"),
     ((9, 0), "bf16-mixed")],
)  # fmt: skip
def test_precision_follows_native_bf16(capability, precision):
    assert devices.precision_for(capability) == precision


def test_auto_precision_counts_gpus_without_initialising_cuda(monkeypatch):
    def refuse():
        raise AssertionError("torch.cuda.is_available() initialises CUDA in the parent")

    monkeypatch.setattr(torch.cuda, "is_available", refuse)
    monkeypatch.setattr(devices, "gpu_driver", lambda: True)  # as on a GPU machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(devices, "gpu_capability", lambda: (7, 5))  # a T4
    assert devices.auto_precision("auto") == "16-mixed"
    assert devices.auto_precision("gpu") == "16-mixed"
    assert devices.auto_precision("cpu") == "32-true"
    monkeypatch.setattr(devices, "gpu_capability", lambda: (9, 0))  # an H100 / H200
    assert devices.auto_precision("auto") == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert devices.auto_precision("auto") == "32-true"
    assert not torch.cuda.is_initialized()


def test_a_machine_without_a_gpu_driver_has_no_gpu_and_needs_no_torch_to_say_so():
    # In a fresh interpreter, as a sweep's launching process asks: no NVIDIA (NVML) library and no
    # ROCm device file means no GPU, decided without the seconds of importing torch.
    probe = """
import ctypes, os, sys
def missing(name, *args, **kwargs):
    raise OSError(f"{name}: cannot open shared object file")
ctypes.CDLL = missing
os.path.exists = lambda path: False
from src import devices
from hydra_plugins.cifar10_lab_launcher.slots import resolve_devices
print(devices.gpu_count(), devices.auto_precision("auto"), resolve_devices("auto", "auto"))
print("torch imported" if "torch" in sys.modules else "no torch")
"""
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split("\n")[:2] == ["0 32-true []", "no torch"], result.stderr


# -- lead 2: a CPU sweep on a GPU machine shares the cores --------------------------------------


def test_a_cpu_sweep_on_a_gpu_machine_runs_on_the_cores(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # a one-GPU machine with 16 cores
    cfg = compose_config("train", ["trainer.accelerator=cpu"], tmp_path)
    assert cfg.hydra.launcher.accelerator == "cpu"
    gpus = resolve_devices(cfg.hydra.launcher.devices, cfg.hydra.launcher.accelerator)
    slots = plan_slots(gpus, 4, 1, None, n_jobs=4, cores=range(16))
    assert [(s.devices, len(s.cores)) for s in slots] == [((), 4)] * 4
    # A GPU sweep on the same machine: every job on GPU 0, four at a time (jobs_per_device).
    overrides = ["trainer.accelerator=gpu", "hydra.launcher.jobs_per_device=4"]
    cfg = compose_config("train", overrides, tmp_path)
    gpus = resolve_devices(cfg.hydra.launcher.devices, cfg.hydra.launcher.accelerator)
    slots = plan_slots(gpus, cfg.hydra.launcher.jobs_per_device, 1, None, 8, range(16))
    assert [s.devices for s in slots] == [("0",)] * 4


# -- lead 5: exact counters under bf16-true / 16-true -------------------------------------------


def test_counters_stay_exact_under_true_half_precision():
    model = Classifier(ConvNet(channels=[4], num_classes=3), class_names="abc")
    model.to(torch.bfloat16)
    assert next(model.net.parameters()).dtype == torch.bfloat16
    assert model.val_acc_best.dtype == torch.float32
    model.val_acc_best.fill_(63.21)
    assert float(model.val_acc_best) == pytest.approx(63.21, abs=1e-5)  # bf16 says 63.25


class EpochSums(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module):  # before the module's hook zeroes them
        self.sums = pl_module.train_sums.clone()


def test_a_bf16_true_run_counts_every_image():
    torch.manual_seed(0)
    images, labels = torch.rand(300, 3, 32, 32), torch.randint(0, 3, (300,))
    model = Classifier(
        net=ConvNet(channels=[4], num_classes=3),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.01),
        class_names="abc",
    )
    sums = EpochSums()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        precision="bf16-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        callbacks=[sums],
    )
    trainer.fit(model, DataLoader(TensorDataset(images, labels), batch_size=7))
    assert float(sums.sums[2]) == 300  # 16 bits would stop at 256 + 4 * 7 = 284 or so
    accuracy = float(sums.sums[1]) / 300 * 100  # correct over images, as the Classifier logs
    assert float(trainer.callback_metrics["train/acc"]) == pytest.approx(accuracy, abs=0.5)


# -- lead 7: a dead rank fails the job within minutes -------------------------------------------


def test_ddp_strategy_times_out_a_dead_rank_in_minutes(tmp_path):
    cfg = compose_config("train", ["trainer=ddp", "trainer.accelerator=cpu"], tmp_path)
    strategy = instantiate(cfg.trainer.strategy)
    assert strategy._timeout <= timedelta(minutes=10)  # Lightning's default: 30 minutes
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, logger=False)
    assert trainer.strategy is strategy


# -- lead 10: no collective per fetch for the checkpoint clock ----------------------------------


def test_resume_checkpoint_asks_the_ranks_clock_only_every_few_fetches(tmp_path):
    callback = ResumeCheckpoint(str(tmp_path / "last.ckpt"), every_minutes=30)
    strategy = mock.Mock()
    strategy.broadcast.return_value = False
    progress = SimpleNamespace(is_last_batch=False)
    trainer = SimpleNamespace(
        world_size=2,
        global_step=0,
        strategy=strategy,
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
    )
    for idx in range(40):
        callback.on_train_batch_end(trainer, None, None, None, idx)
    assert strategy.broadcast.call_count == 40 // ResumeCheckpoint.CLOCK_EVERY
