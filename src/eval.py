"""Test a saved checkpoint: the same numbers `src.train` reports at its end.

python -m src.eval ckpt_path=outputs/runs/.../checkpoints/best.ckpt [data.root=...]
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from src.checkpoint import load_classifier
from src.console import print_results
from src.errors import DataError
from src.models.convnet import count_parameters
from src.run import RunRecord, cli, set_threads

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    set_threads(cfg.threads)
    net_config = OmegaConf.to_container(cfg.model.net, resolve=True) if cfg.get("model") else None
    model = load_classifier(cfg.ckpt_path, net_config)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("test")
    if dm.classes != model.class_names:
        raise DataError(
            f"the data's classes {dm.classes} differ from the checkpoint's {model.class_names}: "
            "point data.source and data.root at the data set the network was trained on"
        )
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], default_root_dir=str(out_dir))
    test = trainer.test(model, datamodule=dm, verbose=False)[0]
    record = RunRecord(
        out_dir / "metrics.json",
        status="finished",
        checkpoint=str(cfg.ckpt_path),
        **{"test/acc": round(test["test/acc"], 4), "test/loss": round(test["test/loss"], 4)},
        **{"test/acc_per_class": model.test_results["acc_per_class"]},
        params=count_parameters(model.net),
        wall_time_s=round(time.perf_counter() - started, 2),
        run_dir=str(out_dir),
    )
    print_results(record.data)
    return record.data


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
@cli
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
