"""Train one network: fit with validation every epoch, then test the best checkpoint.

What `python -m src.train` runs (src.train is the command line), sweep workers and fused groups
call, and the tests and benchmarks build on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from src.callbacks import OptunaPruning
from src.console import print_layer_summary, print_results
from src.data import CIFAR10DataModule
from src.devices import tune_backends
from src.distributed import check_ddp_launch, check_devices
from src.errors import ConfigError, find_user_error
from src.files import write_text
from src.models import Classifier
from src.models.convnet import count_parameters, layer_summary
from src.recovery import (
    check_resumable,
    interrupted_exit_status,
    record_failure,
    resume_checkpoint,
)
from src.run_folder import RunRecord, is_main_process, will_restore_run_folder
from src.threads import set_threads

log = logging.getLogger(__name__)


def check_config(cfg: DictConfig) -> None:
    """Catch values that cannot work before spending any time on data or models."""
    lr = cfg.optimizer.get("lr")
    if lr is None or not lr > 0 or not math.isfinite(lr):
        raise ConfigError(f"optimizer.lr must be a positive number, got {lr}")
    epochs = cfg.trainer.get("max_epochs")
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"trainer.max_epochs must be a positive integer, got {epochs}")
    check_devices(cfg.trainer)


def final_weights_rule(cfg: DictConfig) -> dict:
    """Where no validation split of the training images can pick the checkpoint, the final
    weights are kept and tested: with data.val_size=0 (the seeds' recipes train on all 50,000
    training images; the validation loop is then off) and with data.val_from=test (seed 004's
    curves on the test split: the test split must never select a checkpoint).

    Returns the Trainer arguments that turn validation off (none while it runs).
    """
    from_test = cfg.data.get("val_from") == "test"
    if not from_test and cfg.data.get("val_size") != 0:
        return {}
    checkpoint = cfg.get("callbacks", {}).get("model_checkpoint")
    if checkpoint:
        with open_dict(checkpoint):
            checkpoint.monitor = None
            checkpoint.filename = "final"
    return {} if from_test else {"limit_val_batches": 0}


def build_model(cfg: DictConfig, dm: CIFAR10DataModule) -> Classifier:
    """What trains, from config in one place: the network (model.net) in the Classifier with the
    model's training knobs (model.label_smoothing, model.channels_last), the optimizer and the
    scheduler. How many images one step takes is the data module's (its fetch plan)."""
    net = instantiate(cfg.model.net, num_classes=dm.num_classes)
    return Classifier(
        net=net,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        class_names=dm.classes,
        mean=dm.mean,
        std=dm.std,
        label_smoothing=cfg.model.label_smoothing,
        channels_last=cfg.model.channels_last,
        net_config=OmegaConf.to_container(cfg.model.net, resolve=True),
    )


def build_trainer(cfg: DictConfig, callbacks: Sequence[L.Callback] = (), **kwargs) -> L.Trainer:
    """The configured Trainer, with `callbacks` after the configured ones (benchmark clocks)."""
    configured = (instantiate(c) for c in cfg.get("callbacks", {}).values() if c)
    # A callback factory returns None where its callback does not apply.
    callbacks = [*(c for c in configured if c is not None), *callbacks]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    return instantiate(cfg.trainer, callbacks=callbacks, logger=logger, **kwargs)


def pruned(trainer: L.Trainer) -> bool:
    return any(isinstance(c, OptunaPruning) and c.pruned for c in trainer.callbacks)


def train(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    had_run = (out_dir / "metrics.json").exists()  # before this run's record replaces it
    record = None  # written once every check has passed: a refused run leaves no record

    def new_record(**values) -> RunRecord:
        base = {"run_dir": str(out_dir), "model": cfg.model.name, "seed": cfg.seed}
        return RunRecord(out_dir / "metrics.json", **values, **base)

    try:
        check_config(cfg)
        no_validation = final_weights_rule(cfg)
        ckpt_path = cfg.get("ckpt_path")
        if cfg.get("resume"):
            ckpt_path = resume_checkpoint(out_dir, had_run, ckpt_path)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        threads = set_threads(cfg.threads)
        dm: CIFAR10DataModule = instantiate(cfg.data)
        dm.prepare_data()
        dm.setup("fit")
        model = build_model(cfg, dm)
        if ckpt_path:
            check_resumable(ckpt_path, model)
        params = count_parameters(model.net)
        if is_main_process():
            print_layer_summary(cfg.model.name, layer_summary(model.net, (3, 32, 32)), params)
        # After the summary, whose forward pass on the CPU would otherwise be compiled too.
        if cfg.model.compile:
            model.net.compile()
        trainer = build_trainer(cfg, **no_validation)
        check_ddp_launch(trainer)
        resumed = {"resumed_from": ckpt_path} if ckpt_path else {}
        record = new_record(status="running", **resumed)
        if is_main_process():
            write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        tune_backends(trainer.strategy.root_device, bool(cfg.trainer.get("deterministic")))
        log.info(
            "training %s (%d parameters) on %s, %d CPU threads; run folder %s",
            cfg.model.name,
            params,
            trainer.strategy.root_device,
            threads,
            out_dir,
        )
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        val_acc_best = float(model.val_acc_best)  # read before testing loads the best weights
        if pruned(trainer):  # an Optuna trial its study stopped early: no test
            record.update(
                status="pruned",
                **{"val/acc_best": round(val_acc_best, 4)},
                params=params,
                epochs=trainer.current_epoch,
                wall_time_s=round(time.perf_counter() - started, 2),
            )
            return record.data
        epoch_time = trainer.callback_metrics.get("time/epoch_s")  # the last epoch's
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        test = trainer.test(model, datamodule=dm, ckpt_path=best or None, verbose=False)[0]
    except BaseException as err:
        # A single run refused by a check leaves its folder as it was (src.cli.cli); anything
        # else, and every sweep job, says in metrics.json how it ended.
        refused = find_user_error(err) is not None and will_restore_run_folder(out_dir)
        if record is None and not refused:
            record = new_record(status="failed")
        if record is not None:
            record_failure(record, err, cfg, time.perf_counter() - started)
        if (status := interrupted_exit_status(err)) is not None:
            raise SystemExit(status) from None
        raise
    metrics = {
        "status": "finished",
        "val/acc_best": round(val_acc_best, 4) if math.isfinite(val_acc_best) else None,
        "test/acc": round(test["test/acc"], 4),
        "test/loss": round(test["test/loss"], 4),
        "test/acc_per_class": model.test_results["acc_per_class"],
        "params": params,
        "epochs": trainer.current_epoch,
        "epoch_time_s": round(float(epoch_time), 2) if epoch_time is not None else None,
        "wall_time_s": round(time.perf_counter() - started, 2),
        "best_checkpoint": best,
    }
    record.update(**metrics)
    if is_main_process():
        print_results(record.data)
    return record.data
