"""A run's TensorBoard dashboards beyond loss and accuracy: speed, pictures and HParams.

Lightning callbacks, enabled in conf/callbacks/default.yaml. They write through the run's
TensorBoardLogger (on the main process only) and do nothing in a run without one (`~logger`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.plugins.hparams.api_pb2 import (
    DATA_TYPE_FLOAT64,
    DATA_TYPE_STRING,
    STATUS_FAILURE,
    STATUS_SUCCESS,
    Experiment,
    HParamInfo,
    MetricInfo,
    MetricName,
)
from tensorboard.plugins.hparams.plugin_data_pb2 import (
    HParamsPluginData,
    SessionEndInfo,
    SessionStartInfo,
)
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

from src.data.loader import pixels_to_float
from src.models.convnet import count_parameters
from src.overrides import parse_overrides
from src.plots import confusion_figure, figure_pixels, prediction_grid_figure, spread

log = logging.getLogger(__name__)


def tensorboard_writer(trainer: L.Trainer) -> SummaryWriter | None:
    """The run's TensorBoard writer on the main process; None elsewhere or without one."""
    if not trainer.is_global_zero:
        return None
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class EpochSpeed(L.Callback):
    """Logs `time/epoch_s` (training and validation) and `time/train_images_per_s` each epoch.

    Images per second count the training phase only (loading, augmentation, forward, backward
    and optimizer step), summed over every process.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run resumed mid-epoch gets no on_train_epoch_start: count from the resume.
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = self.train_ended = time.perf_counter()
        self.images = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.images += len(batch[1])
        if batch_idx + 1 >= trainer.num_training_batches and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # the GPU may still be working on the epoch
        self.train_ended = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        train_s = max(self.train_ended - self.started, 1e-9)
        pl_module.log("time/epoch_s", time.perf_counter() - self.started)
        pl_module.log("time/train_images_per_s", self.images * trainer.world_size / train_s)


class ImageDashboards(L.Callback):
    """Pictures of the run under `images/`.

    - `train_augmented`: the run's first training batch as the network gets it, after
      augmentation. Batches hold raw pixels in [0, 1] (the input normalisation is the model's
      first step), so these are the de-normalised images.
    - `test_predictions`: `n_images` test images spread evenly over the test set, titled
      "predicted (true)", green when right and red when wrong (the same images in every run).
    - `confusion_val_best`: the validation confusion matrix of the best epoch, after fitting.
    - `confusion_test`: the test confusion matrix.
    """

    def __init__(self, n_images: int = 32):
        self.n_images = n_images
        self.train_logged = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        writer = tensorboard_writer(trainer)
        if self.train_logged or writer is None:
            return
        grid = make_grid(batch[0][: self.n_images].detach().float().clamp(0, 1).cpu(), nrow=8)
        writer.add_image("images/train_augmented", grid, trainer.global_step)
        self.train_logged = True

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        confusion = getattr(pl_module, "val_confusion_best", None)
        if confusion is not None:
            self._add_confusion(trainer, pl_module, "confusion_val_best", confusion, "validation")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        confusion = getattr(pl_module, "test_results", {}).get("confusion")
        if confusion is not None:
            self._add_confusion(trainer, pl_module, "confusion_test", confusion, "test")
        writer = tensorboard_writer(trainer)
        data = trainer.datamodule
        if writer is None or not hasattr(data, "test_images"):
            return
        pick = spread(len(data.test_labels), self.n_images)
        images, labels = data.test_images[pick], data.test_labels[pick]  # uint8 N x H x W x 3
        with torch.inference_mode():
            inputs = pixels_to_float(images.to(pl_module.device), hwc=True)
            preds = pl_module(inputs).argmax(1)
        figure = prediction_grid_figure(
            images.cpu().numpy(), pl_module.class_names, preds.tolist(), labels.tolist()
        )
        writer.add_image(
            "images/test_predictions", figure_pixels(figure), trainer.global_step, dataformats="HWC"
        )

    @staticmethod
    def _add_confusion(trainer, pl_module, tag: str, confusion: Tensor, title: str) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        figure = confusion_figure(confusion.numpy(), pl_module.class_names, title)
        writer.add_image(
            f"images/{tag}", figure_pixels(figure), trainer.global_step, dataformats="HWC"
        )


def _flatten(values: Mapping, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _hparams_summary(tag: str, **plugin_data: Any) -> Summary:
    """One summary of TensorBoard's HParams plugin (what its own summary writers produce)."""
    content = HParamsPluginData(version=hp_metadata.PLUGIN_DATA_VERSION, **plugin_data)
    plugin = SummaryMetadata.PluginData(
        plugin_name=hp_metadata.PLUGIN_NAME, content=content.SerializeToString()
    )
    return Summary(value=[Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin))])


class HParamsSummary(L.Callback):
    """The run in TensorBoard's HParams dashboard: its hyperparameters and final metrics.

    Hyperparameters: `hparams` (a nested mapping from the config, flattened to dotted names)
    plus every override of the Hydra job, so a sweep's swept values are always there, under the
    same names as on the command line (and flagged as differing, so TensorBoard lists them
    first). Metrics: the scalar tags in `metrics`; TensorBoard reads their values from the run,
    so a run stopped halfway shows its latest values. This callback logs two of them: `params`
    (parameter count) and `time/wall_s` (seconds from the start of fitting to the end of
    fitting, then of testing). The session ends as a success after testing, as a failure when
    the run raises.
    """

    def __init__(self, hparams: Mapping | None = None, metrics: Sequence[str] = ()):
        if isinstance(hparams, DictConfig):
            hparams = OmegaConf.to_container(hparams, resolve=True)
        self.config_hparams = _flatten(hparams or {})
        self.metrics = list(metrics)
        self.started: float | None = None

    def run_hparams(self) -> tuple[dict[str, bool | float | str], set[str]]:
        """The run's hyperparameters, and the names that come from the job's overrides."""
        overrides = {}
        if HydraConfig.initialized():
            overrides = parse_overrides(HydraConfig.get().overrides.task)
        values = {}
        for key, value in {**self.config_hparams, **overrides}.items():
            if value is None:
                continue
            # Numbers stay numbers (HParams plots them on an axis); the rest, booleans included,
            # read best as text.
            is_number = isinstance(value, int | float) and not isinstance(value, bool)
            values[key] = float(value) if is_number else str(value)
        return dict(sorted(values.items())), set(overrides)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        values, overridden = self.run_hparams()
        experiment = Experiment(
            hparam_infos=[
                HParamInfo(
                    name=key,
                    type=DATA_TYPE_FLOAT64 if isinstance(value, float) else DATA_TYPE_STRING,
                    differs=key in overridden,
                )
                for key, value in values.items()
            ],
            metric_infos=[MetricInfo(name=MetricName(tag=tag)) for tag in self.metrics],
        )
        start = SessionStartInfo(start_time_secs=time.time())
        for key, value in values.items():
            if isinstance(value, float):
                start.hparams[key].number_value = value
            else:
                start.hparams[key].string_value = value
        file_writer = writer._get_file_writer()  # raw summaries, as Lightning's own hparams do
        file_writer.add_summary(_hparams_summary(hp_metadata.EXPERIMENT_TAG, experiment=experiment))
        file_writer.add_summary(
            _hparams_summary(hp_metadata.SESSION_START_INFO_TAG, session_start_info=start)
        )
        writer.add_scalar("params", count_parameters(pl_module), 0)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._add_wall_time(trainer)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._add_wall_time(trainer)
        self._end_session(trainer, STATUS_SUCCESS)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._end_session(trainer, STATUS_FAILURE)

    def _add_wall_time(self, trainer: L.Trainer) -> None:
        writer = tensorboard_writer(trainer)
        if writer is not None and self.started is not None:
            elapsed = time.perf_counter() - self.started
            writer.add_scalar("time/wall_s", elapsed, trainer.global_step)

    def _end_session(self, trainer: L.Trainer, status: int) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or self.started is None:
            return
        end = SessionEndInfo(status=status, end_time_secs=time.time())
        writer._get_file_writer().add_summary(
            _hparams_summary(hp_metadata.SESSION_END_INFO_TAG, session_end_info=end)
        )
        writer.flush()
