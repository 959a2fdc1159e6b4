"""Fused sweeps: a sweep's jobs that build the same network shape train as one model.

`fusion_key` says which jobs may train together; `train_group` trains them (src.fused.group),
each member the run it would have been alone, with its own folder. See docs/fused.md.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# What a member may hold for itself (dotted config keys, each with everything under it): its
# seed (initial weights, data order, augmentation and dropout draws), optimizer and schedule,
# label smoothing, and where it writes. Everything else must be equal.
FUSABLE = (
    "seed",
    "data.seed",
    "data.augment_seed",
    "optimizer",
    "scheduler",
    "model.label_smoothing",
    "paths",
    "hydra",
    "resume",
    "trainer.default_root_dir",
    "logger.save_dir",
    "callbacks.model_checkpoint.dirpath",
    "callbacks.resume_checkpoint.path",
    "callbacks.epoch_seed.seed",
    "callbacks.stop_on_divergence.lr",
    "callbacks.hparams.hparams",
)
PRECISIONS = ("32-true", "32", "bf16-mixed")


def _fusable(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in FUSABLE)


def _flat(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: value}


def _resolved(cfg: DictConfig) -> dict:
    """The config as plain values, each interpolation resolved where it can be: ${hydra:...}
    needs a Hydra context, which a launcher composing many jobs may not have set (those values
    say where a job writes, which members may differ in anyway)."""
    data = OmegaConf.to_container(cfg, resolve=False)
    data.pop("hydra", None)
    node = OmegaConf.create(data)

    def resolve(value, path: str):
        if isinstance(value, dict):
            return {k: resolve(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, f"{path}.{i}") for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            try:
                found = OmegaConf.select(node, path)
            except Exception:
                return value
            return (
                OmegaConf.to_container(found, resolve=True) if OmegaConf.is_config(found) else found
            )
        return value

    return resolve(data, "")


def once_per_epoch(val_check_interval) -> bool:
    """Lightning's default (None, or the fraction 1.0); a whole number counts batches."""
    v = val_check_interval
    return v is None or (isinstance(v, float) and v == 1.0)


def why_alone(cfg: DictConfig) -> str | None:
    """Why this job cannot train in a fused group (None: it can)."""
    return _why_alone(_resolved(cfg))


def _why_alone(c: dict) -> str | None:
    trainer, model = c.get("trainer", {}), c.get("model", {})
    target = (model.get("net") or {}).get("_target_")
    checks = [
        (target not in ("src.models.ConvNet", "src.models.convnet.ConvNet"), "not a ConvNet"),
        (trainer.get("devices", 1) not in (1, "1"), "more than one device"),
        (str(trainer.get("strategy", "auto")) not in ("auto", "None"), "a trainer strategy"),
        (str(trainer.get("precision")) not in PRECISIONS, f"precision {trainer.get('precision')}"),
        (not once_per_epoch(trainer.get("val_check_interval")), "validation inside epochs"),
        (bool(model.get("compile")), "model.compile"),
        (bool(model.get("channels_last")), "model.channels_last"),
        (c.get("optuna_trial") is not None, "an Optuna trial"),
        (c.get("ckpt_path") is not None, "ckpt_path"),
    ]
    return next((why for bad, why in checks if bad), None)


def fusion_key(cfg: DictConfig) -> str:
    """What must be equal for two jobs to train as one fused model: the resolved config minus
    what a member may hold for itself (FUSABLE: seed, optimizer and scheduler settings, label
    smoothing, and where it writes). Jobs with equal keys may be fused; a job that cannot be
    fused at all (why_alone) gets a key of its own."""
    resolved = _resolved(cfg)  # once: resolving is most of the launcher's time per job
    reason = _why_alone(resolved)
    if reason:
        return f"alone ({reason}) {uuid.uuid4().hex}"
    flat = _flat(resolved)
    kept = {key: value for key, value in flat.items() if not _fusable(key)}
    return json.dumps(kept, sort_keys=True, default=str)


def train_group(cfgs: list[DictConfig], out_dirs: list[Path]) -> list[dict]:
    """Train K jobs that build the same network shape as one fused model, in this process.

    cfgs[i] is job i's composed train config (as src.train's task function receives it, with or
    without its `hydra` node), out_dirs[i] its job folder. Each member writes into its folder
    what a single run writes (config.yaml, train.log, metrics.json with its own status,
    tensorboard/, checkpoints/best.ckpt or final.ckpt and last.ckpt, single-network
    checkpoints). Returns each member's metrics dict (as src.training.train returns), in order.
    A member that diverges is recorded as `diverged` and dropped while the others go on; a
    member whose folder holds a last.ckpt (an earlier, killed group) resumes from it; a member
    already finished is not trained again. A job that cannot be fused (why_alone), one whose
    last.ckpt was saved mid-epoch (stopped_mid_epoch), or a group of one, trains alone through
    src.training.train. Raises only for a fault of the whole group
    (then every unfinished member is recorded as failed, with the error).
    """
    import time

    from src.fused.group import Member, fail, train_fused
    from src.recovery import interrupted_exit_status

    if len(cfgs) != len(out_dirs):
        raise ValueError(f"{len(cfgs)} configs for {len(out_dirs)} job folders")
    members = [
        Member(i, cfg, Path(d)) for i, (cfg, d) in enumerate(zip(cfgs, out_dirs, strict=True))
    ]
    results: list[dict | None] = [None] * len(members)
    together, alone = [], []
    for m in members:
        record = m.out_dir / "metrics.json"
        if record.is_file() and json.loads(record.read_text()).get("status") == "finished":
            results[m.index] = json.loads(record.read_text())
        elif why_alone(m.cfg) or stopped_mid_epoch(m.cfg):
            alone.append(m)
        else:
            together.append(m)
    if len({fusion_key(m.cfg) for m in together}) > 1:
        raise ValueError("train_group got jobs of different fusion keys: group them by fusion_key")
    if len(together) == 1:
        alone += together
        together = []
    started = time.perf_counter()
    try:
        if together:
            train_fused(together)
    except BaseException as err:
        for m in together:
            if m.status == "training":
                fail(m, err, started)
        if (status := interrupted_exit_status(err)) is not None:
            raise SystemExit(status) from None
        raise
    finally:
        for m in together:
            m.close_log()
    for m in together:
        results[m.index] = m.record.data
    for m in alone:
        m.close_log()
        results[m.index] = _train_alone(m)
    return results


def stopped_mid_epoch(cfg: DictConfig) -> bool:
    """Whether the job's last.ckpt was saved inside an epoch (a single run's save on SIGTERM or
    on its timer): a fused member resumes at the start of an epoch, so such a job trains alone,
    where Lightning continues from that batch."""
    from src.checkpoint import read_checkpoint

    resume = cfg.get("callbacks", {}).get("resume_checkpoint")
    if not resume or not Path(resume.path).is_file():
        return False
    loops = read_checkpoint(resume.path, ("loops",))["loops"]
    return not loops["fit_loop"]["epoch_loop.batch_progress"]["is_last_batch"]


def _train_alone(member) -> dict:
    """A job outside any group: src.training.train in its own Hydra context. Its own failure is
    recorded in its metrics.json by train and does not stop the others."""
    from src.errors import find_user_error
    from src.training import train

    with member.context():
        try:
            return train(member.cfg)
        except Exception as err:  # recorded by train already
            log.error("%s: %s", member.out_dir, find_user_error(err) or err)
            path = member.out_dir / "metrics.json"
            return json.loads(path.read_text()) if path.is_file() else {"status": "failed"}
