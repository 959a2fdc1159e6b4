"""The data path: sources, cache, splits, loaders and augmentation."""

from __future__ import annotations

import errno
import multiprocessing as mp
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch

from src.data import CIFAR10DataModule
from src.data.augment import PRESETS, get_augment
from src.data.fetching import BatchCounters, Fetching
from src.data.loader import EpochShuffle, TensorBatchLoader
from src.errors import ConfigError, DataError


def datamodule(root: Path, tmp_path: Path, **kwargs) -> CIFAR10DataModule:
    args = dict(source="folder", root=str(root), cache_dir=str(tmp_path / "cache"), val_size=12)
    dm = CIFAR10DataModule(**{**args, **kwargs})
    dm.setup("fit")
    return dm


def test_folder_source_decodes_every_image(folder_data, tmp_path):
    dm = datamodule(folder_data, tmp_path)
    assert dm.classes == ["cat", "dog", "ship"]
    assert dm.data.train_images.shape == (120, 32, 32, 3)
    assert dm.data.train_images.dtype == np.uint8
    assert dm.data.test_images.shape == (30, 32, 32, 3)
    assert np.bincount(dm.data.train_labels).tolist() == [40, 40, 40]


def test_official_source_reads_torchvision_batches(official_data, tmp_path):
    dm = datamodule(official_data, tmp_path, source="torchvision", download=False)
    assert dm.data.train_images.shape == (150, 32, 32, 3)
    assert dm.data.test_images.shape == (30, 32, 32, 3)
    assert dm.classes[0] == "airplane" and len(dm.classes) == 10


def test_tampered_official_file_is_refused(official_data, tmp_path):
    batch = official_data / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:-10])
    with pytest.raises(DataError, match="integrity check"):
        datamodule(official_data, tmp_path, source="torchvision", download=False)


def test_offline_download_fails_fast_with_a_hint(tmp_path, monkeypatch):
    import socket

    def unreachable(*args, **kwargs):
        raise socket.gaierror("Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", unreachable)
    with pytest.raises(DataError, match="data.source=folder"):
        datamodule(tmp_path / "nothing", tmp_path, source="torchvision", download=True)
    assert not list((tmp_path / "nothing").glob("*.tar.gz")), "no half-downloaded archive left"


def test_other_sizes_are_resized_with_a_warning(folder_data, tmp_path, caplog):
    from PIL import Image

    Image.new("RGB", (64, 48), (255, 0, 0)).save(folder_data / "train" / "cat" / "big.jpg")
    dm = datamodule(folder_data, tmp_path)
    assert dm.data.train_images.shape == (121, 32, 32, 3)
    assert "were not 32x32 and were resized" in caplog.text


def test_cache_is_reused_not_rebuilt(folder_data, tmp_path):
    first = datamodule(folder_data, tmp_path)
    entries = list((tmp_path / "cache").iterdir())
    second = datamodule(folder_data, tmp_path)
    assert second.data.path == first.data.path
    assert list((tmp_path / "cache").iterdir()) == entries
    assert isinstance(second.data.train_images, np.memmap), "cache is memory-mapped"


def _prepare(root: str, cache: str) -> str:
    dm = CIFAR10DataModule(source="folder", root=root, cache_dir=cache, val_size=12)
    dm.setup("fit")
    return str(dm.data.path)


def test_two_processes_preparing_at_once_share_one_intact_cache(folder_data, tmp_path):
    cache = str(tmp_path / "cache")
    with mp.get_context("spawn").Pool(2) as pool:
        paths = pool.starmap(_prepare, [(str(folder_data), cache)] * 2)
    assert paths[0] == paths[1]
    entries = [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]
    assert len(entries) == 1, f"one cache entry, no temporary leftovers: {entries}"
    assert np.load(Path(paths[0]) / "train_images.npy").shape == (120, 32, 32, 3)


def test_full_disk_while_caching_is_a_data_error_and_leaves_nothing(folder_data, tmp_path):
    real_save = np.save

    def save_then_fill_the_disk(path, array):
        real_save(path, array[:1])  # part of the data got out, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    with (
        mock.patch("src.data.cache.np.save", save_then_fill_the_disk),
        pytest.raises(
            DataError, match=r"cannot write the data cache .* \(No space left on device\)"
        ),
    ):
        datamodule(folder_data, tmp_path)
    left = [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]
    assert left == [], "no half-written cache entry or temporary folder"
    assert datamodule(folder_data, tmp_path).data.train_images.shape == (120, 32, 32, 3)


def test_splits_are_disjoint_repeatable_and_never_touch_test(folder_data, tmp_path):
    a = datamodule(folder_data, tmp_path, split_seed=1)
    b = datamodule(folder_data, tmp_path, split_seed=1)
    c = datamodule(folder_data, tmp_path, split_seed=2)
    assert set(a.train_idx.tolist()).isdisjoint(a.val_idx.tolist())
    assert len(a.train_idx) + len(a.val_idx) == 120 and len(a.val_idx) == 12
    assert torch.equal(a.val_idx, b.val_idx)
    assert not torch.equal(a.val_idx, c.val_idx)
    assert a.val_dataloader().images is a.train_images  # validation comes from training data
    assert a.test_dataloader().images is a.test_images


def test_validation_fraction_and_test_as_validation(folder_data, tmp_path):
    assert len(datamodule(folder_data, tmp_path, val_size=0.25).val_idx) == 30
    seed004 = datamodule(folder_data, tmp_path, val_from="test")
    assert len(seed004.train_idx) == 120
    assert seed004.val_dataloader().images is seed004.test_images


def test_validation_as_large_as_training_is_refused(folder_data, tmp_path):
    with pytest.raises(ConfigError, match="val_size"):
        datamodule(folder_data, tmp_path, val_size=120)


def test_loader_yields_every_training_image_once_per_epoch(folder_data, tmp_path):
    dm = datamodule(folder_data, tmp_path, batch_size=7, fetch_size=7)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 16
    images, labels = batches[0]
    assert images.shape == (7, 3, 32, 32) and images.dtype == torch.uint8
    seen = torch.cat([y for _, y in batches])
    assert len(seen) == 108
    loader.sampler.set_epoch(1)
    assert not torch.equal(loader.sampler.order(), dm.train_dataloader().sampler.order())


@pytest.mark.parametrize("drop_last", [False, True])
def test_fetches_of_several_batches_hold_the_same_batches_in_order(drop_last):
    images, labels = torch.zeros(20, 2, 2, 3, dtype=torch.uint8), torch.arange(20)

    def loader(per_fetch: int) -> TensorBatchLoader:
        sampler = EpochShuffle(torch.arange(20), shuffle=True, seed=1)
        fetching = Fetching.plan(20, 3, 3 * per_fetch, drop_last=drop_last)
        return TensorBatchLoader(images, labels, sampler, fetching)

    one_by_one = [labels for _, labels in loader(1)]
    fetched = [labels for _, labels in loader(4)]
    assert len(one_by_one) == (6 if drop_last else 7) == loader(4).fetching.batches
    assert [len(f) for f in fetched] == ([12, 6] if drop_last else [12, 8])
    assert torch.equal(torch.cat(fetched), torch.cat(one_by_one))


def test_fetch_size_is_rounded_down_to_whole_batches_and_at_least_one(folder_data, tmp_path):
    def per_fetch(batch_size: int, fetch_size: int) -> int:
        dm = datamodule(folder_data, tmp_path, batch_size=batch_size, fetch_size=fetch_size)
        return dm.fetching.per_fetch

    assert per_fetch(4, 1024) == 256
    assert per_fetch(100, 1024) == 10
    assert per_fetch(2048, 1024) == 1
    with pytest.raises(ConfigError, match="data.fetch_size must be a positive integer"):
        datamodule(folder_data, tmp_path, fetch_size=0)


def test_fetches_end_where_lightnings_counters_in_batches_say():
    plan = Fetching.plan  # 100 images in batches of 4: 25 batches
    assert plan(100, 4, 40) == Fetching(batch_size=4, per_fetch=10, batches=25)
    limited = plan(100, 4, 40, counters=BatchCounters(limit_train_batches=13))
    assert (limited.batches, limited.fetches) == (13, 2)  # 10 batches, then 3
    assert plan(100, 4, 40, counters=BatchCounters(limit_train_batches=0.5)).batches == 12
    # Validation every 6 batches: fetches of 6 (the largest that divides 6 within 10 batches).
    assert plan(100, 4, 40, counters=BatchCounters(val_check_interval=6)).per_fetch == 6
    # Counted across epochs, fetches also end with the epoch: 5 divides 25 and 15.
    across = BatchCounters(val_check_interval=15, across_epochs=True)
    assert plan(100, 4, 40, counters=across).per_fetch == 5
    with pytest.raises(ConfigError, match="val_check_interval=30 counts training batches"):
        plan(100, 4, 40, counters=BatchCounters(val_check_interval=30))


def test_loader_resumes_at_the_next_batch_of_the_epoch():
    """What Lightning stores in a mid-epoch checkpoint and gives back on resume."""
    images, labels = torch.zeros(20, 2, 2, 3, dtype=torch.uint8), torch.arange(20)

    def loader(epoch: int) -> TensorBatchLoader:
        sampler = EpochShuffle(torch.arange(20), shuffle=True, seed=1)
        sampler.set_epoch(epoch)
        return TensorBatchLoader(images, labels, sampler, Fetching.plan(20, 3))

    expected = [labels for _, labels in loader(2)]
    interrupted = iter(first := loader(2))
    seen = [next(interrupted)[1] for _ in range(3)]
    resumed = loader(0)
    resumed.load_state_dict(first.state_dict())
    rest = [labels for _, labels in resumed]
    assert len(rest) == 4 and torch.equal(torch.cat(seen + rest), torch.cat(expected))
    resumed.sampler.set_epoch(3)
    assert len(list(resumed)) == 7, "the next epoch starts at its first batch"


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "none"])
def test_augmentation_keeps_shape_dtype_range_and_changes_images(preset):
    x = torch.rand(16, 3, 32, 32)
    out = get_augment(preset)(x.clone())
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


def test_augmentation_changes_training_batches_only(folder_data, tmp_path):
    dm = datamodule(folder_data, tmp_path, augment="flip_crop")
    batch = next(iter(dm.train_dataloader()))
    dm.trainer = fake_trainer()
    augmented, _ = dm.on_after_batch_transfer(batch, 0)
    dm.trainer.training = False
    plain, _ = dm.on_after_batch_transfer(batch, 0)
    assert torch.equal(plain, batch[0].float() / 255)
    assert not torch.equal(augmented, plain)


def fake_trainer(fetches_done: int = 0, epoch: int = 0, rank: int = 0, world: int = 1):
    """What the data module reads of Lightning's trainer while training."""
    progress = SimpleNamespace(current=SimpleNamespace(ready=fetches_done))
    return SimpleNamespace(
        training=True,
        current_epoch=epoch,
        global_rank=rank,
        world_size=world,
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
    )


def test_unknown_augmentation_and_source_are_config_errors(folder_data, tmp_path):
    with pytest.raises(ConfigError, match="data.augment"):
        datamodule(folder_data, tmp_path, augment="mixup")
    with pytest.raises(ConfigError, match="data.source"):
        datamodule(folder_data, tmp_path, source="s3")


def test_dataset_normalisation_comes_from_training_images(folder_data, tmp_path):
    dm = datamodule(folder_data, tmp_path, normalize="dataset")
    pixels = dm.data.train_images.reshape(-1, 3) / 255
    assert np.allclose(dm.mean, pixels.mean(0), atol=1e-4)
    assert np.allclose(dm.std, pixels.std(0), atol=1e-4)
    assert datamodule(folder_data, tmp_path).mean == [0.5, 0.5, 0.5]
