"""A run's TensorBoard events hold the speed scalars, the pictures and the HParams session."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hp_metadata

from src.training import train
from tests.conftest import CLASSES, compose_config, make_folder_tree, tiny_overrides

IMAGE_TAGS = {
    "images/train_augmented",
    "images/test_predictions",
    "images/confusion_val_best",
    "images/confusion_test",
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[dict, EventAccumulator]:
    tmp = tmp_path_factory.mktemp("dashboards")
    data = make_folder_tree(tmp / "data")
    overrides = [*tiny_overrides(tmp, data), "optimizer.lr=0.02", "data.augment=flip_crop"]
    metrics = train(compose_config("train", overrides, tmp / "run"))
    events = EventAccumulator(str(tmp / "run" / "tensorboard"), size_guidance={"images": 0})
    return metrics, events.Reload()


def test_scalars_include_speed_per_class_accuracy_and_size(tiny_run):
    metrics, events = tiny_run
    tags = set(events.Tags()["scalars"])
    expected = {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/acc"}
    expected |= {"time/epoch_s", "time/train_images_per_s", "time/wall_s", "params"}
    expected |= {f"{stage}/acc_class/{name}" for stage in ("val", "test") for name in CLASSES}
    assert expected <= tags
    speeds = [event.value for event in events.Scalars("time/train_images_per_s")]
    assert len(speeds) == 2 and all(speed > 0 for speed in speeds)  # one per epoch
    epoch_times = [event.value for event in events.Scalars("time/epoch_s")]
    assert 0 < max(epoch_times) < metrics["wall_time_s"]
    assert events.Scalars("params")[-1].value == metrics["params"]


def _image(events: EventAccumulator, tag: str) -> Image.Image:
    return Image.open(io.BytesIO(events.Images(tag)[-1].encoded_image_string))


def test_images_are_logged(tiny_run):
    _, events = tiny_run
    assert IMAGE_TAGS <= set(events.Tags()["images"])
    # The first training fetch (16 images: data.fetch_size=16) in rows of eight 32x32 tiles.
    grid = _image(events, "images/train_augmented")
    assert grid.size == (8 * 34 + 2, 2 * 34 + 2)
    for tag in ("images/test_predictions", "images/confusion_test", "images/confusion_val_best"):
        width, height = _image(events, tag).size
        assert width > 300 and height > 200, tag


def test_hparams_session_has_the_overrides_and_final_metrics(tiny_run):
    _, events = tiny_run
    content = events.PluginTagToContent(hp_metadata.PLUGIN_NAME)
    start = hp_metadata.parse_session_start_info_plugin_data(
        content[hp_metadata.SESSION_START_INFO_TAG]
    )
    hparams = {
        key: getattr(value, value.WhichOneof("kind")) for key, value in start.hparams.items()
    }
    assert hparams["optimizer.lr"] == 0.02  # an override, as a number
    assert hparams["data.augment"] == "flip_crop"
    assert hparams["model.name"] == "tutorial" and hparams["optimizer.name"] == "sgd"
    assert hparams["seed"] == 0 and hparams["trainer.max_epochs"] == 2
    experiment = hp_metadata.parse_experiment_plugin_data(content[hp_metadata.EXPERIMENT_TAG])
    metric_tags = {info.name.tag for info in experiment.metric_infos}
    assert {"val/acc_best", "test/acc", "params", "time/wall_s"} <= metric_tags
    assert metric_tags <= set(events.Tags()["scalars"])  # every metric has values to show
    differs = {info.name for info in experiment.hparam_infos if info.differs}
    assert "optimizer.lr" in differs and "model.name" not in differs
    end = hp_metadata.parse_session_end_info_plugin_data(content[hp_metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_SUCCESS


def test_the_dashboards_stay_quiet_in_a_run_without_a_logger(folder_data, tmp_path: Path):
    # (Lightning's LearningRateMonitor refuses to run without a logger, so it goes too.)
    without = ["~logger", "~callbacks.lr_monitor", "trainer.max_epochs=1"]
    overrides = [*tiny_overrides(tmp_path, folder_data), *without]
    metrics = train(compose_config("train", overrides, tmp_path / "run"))
    assert metrics["status"] == "finished"
    assert not (tmp_path / "run" / "tensorboard").exists()
