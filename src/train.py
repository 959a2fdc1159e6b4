"""Train one network: fit with validation every epoch, then test the best checkpoint.

python -m src.train model=tutorial optimizer.lr=0.01 data.batch_size=128 trainer.max_epochs=5

The command line only: the training is src.training's. This module imports neither torch nor
Lightning, so a sweep's launching process, which runs it but trains nothing itself, starts in a
fraction of a second, while its workers import them once each.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from src.cli import cli, entry_point


@entry_point
@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@cli
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the metric a sweeper maximises (best validation accuracy)."""
    from src.training import train

    return train(cfg).get(cfg.get("optimized_metric", "val/acc_best"))


if __name__ == "__main__":
    main()
