"""Load a trained Classifier from a checkpoint alone (the network is rebuilt from its config)."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate

from src.errors import CheckpointError
from src.models import Classifier


def read_checkpoint(path: str | Path, keys: tuple[str, ...] = ("state_dict",)) -> dict:
    """The checkpoint's contents (tensors and plain data only), or one CheckpointError line.

    torch's own message for a file that is not a checkpoint suggests loading it with
    weights_only=False, which is never the fix here (and runs whatever code the file holds).
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip, and format errors all mean "not a usable checkpoint"
        broken_zip = isinstance(err, RuntimeError) and "zip archive" in str(err)
        why = "a truncated or damaged file" if broken_zip else "not a file torch.save wrote"
        raise CheckpointError(
            f"cannot read checkpoint {path} ({why}): it is corrupt or not a cifar10-lab "
            "checkpoint; pass a run's checkpoints/best.ckpt or last.ckpt"
        ) from err
    missing = [key for key in keys if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} holds no {missing[0]}: it is not a cifar10-lab checkpoint; pass a "
            "run's checkpoints/best.ckpt or last.ckpt"
        )
    return checkpoint


def load_classifier(path: str | Path, net_config: dict | None = None) -> Classifier:
    """Rebuild the checkpoint's network (or the one `net_config` describes) and load its weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist: pass ckpt_path=<run>/checkpoints/best.ckpt"
        )
    checkpoint = read_checkpoint(path, ("hyper_parameters", "state_dict"))
    hparams, state = checkpoint["hyper_parameters"], checkpoint["state_dict"]
    config = net_config or hparams["net_config"]
    net = instantiate(config, num_classes=len(hparams["class_names"]))
    # Checkpoints from before the data module's fetch plan also stored batch_size.
    kept = {k: v for k, v in hparams.items() if k not in ("net_config", "batch_size")}
    model = Classifier(net, **kept, net_config=config)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise CheckpointError(
            f"checkpoint {path} holds a different network than {config.get('channels')!r} "
            f"({first}): drop the model= override or pass the checkpoint of that network"
        ) from err
    return model.eval()
