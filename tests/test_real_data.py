"""Short checks on the real CIFAR-10 copy in ../shared (skipped where it is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from src.data import CIFAR10DataModule
from src.training import train
from tests.conftest import OFFICIAL_CLASSES, compose_config, real_overrides


def test_real_copy_decodes_to_the_cifar10_layout(real_data):
    dm = CIFAR10DataModule(source="folder", root=str(real_data))
    dm.setup("fit")
    assert dm.classes == OFFICIAL_CLASSES
    assert dm.data.train_images.shape == (50000, 32, 32, 3)
    assert dm.data.test_images.shape == (5000, 32, 32, 3)
    assert np.bincount(dm.data.test_labels).tolist() == [500] * 10
    assert len(dm.train_idx) == 45000 and len(dm.val_idx) == 5000
    assert 0.4 < dm.data.mean[0] < 0.55  # CIFAR-10's red-channel mean is about 0.49


@pytest.mark.slow
def test_tutorial_net_learns_on_real_data_in_one_epoch(real_data, tmp_path):
    overrides = ["model=tutorial", "trainer.max_epochs=1", *real_overrides(real_data)]
    metrics = train(compose_config("train", overrides, tmp_path / "run"))
    assert metrics["test/acc"] > 40  # chance is 10%; the default recipe reaches about 48%
