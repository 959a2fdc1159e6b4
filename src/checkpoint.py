"""Load a trained Classifier from a checkpoint alone (the network is rebuilt from its config)."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate

from src.errors import CheckpointError, first_line
from src.models import Classifier


def load_classifier(path: str | Path, net_config: dict | None = None) -> Classifier:
    """Rebuild the checkpoint's network (or the one `net_config` describes) and load its weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist: pass ckpt_path=<run>/checkpoints/best.ckpt"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        hparams = checkpoint["hyper_parameters"]
        state = checkpoint["state_dict"]
    except Exception as err:  # pickle, zip and key errors all mean "not a usable checkpoint"
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(err).__name__}: {first_line(err)}): it is "
            "corrupt or not a cifar10-lab checkpoint"
        ) from err
    config = net_config or hparams["net_config"]
    net = instantiate(config, num_classes=len(hparams["class_names"]))
    model = Classifier(
        net, **{k: v for k, v in hparams.items() if k != "net_config"}, net_config=config
    )
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise CheckpointError(
            f"checkpoint {path} holds a different network than {config.get('channels')!r} "
            f"({first}): drop the model= override or pass the checkpoint of that network"
        ) from err
    return model.eval()
