"""A job's Hydra overrides as a dict: what TensorBoard's HParams and the sweep report compare."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

Scalar = bool | int | float | str


def parse_overrides(lines: Iterable[str]) -> dict[str, Scalar]:
    """`["optimizer.lr=0.01", "+tag=a"]` -> `{"optimizer.lr": 0.01, "tag": "a"}`.

    Values keep their type when they are numbers or booleans; anything else (lists, null,
    strings) is kept as the text of the override. Deletions (`~key`) are left out.
    """
    parsed = {}
    for override in OverridesParser.create().parse_overrides(list(lines)):
        if override.is_delete():
            continue
        value = override.value()
        if not isinstance(value, bool | int | float):
            value = override.get_value_element_as_str()
        parsed[override.key_or_group] = value
    return parsed


def read_job_overrides(job_dir: Path) -> dict[str, Scalar]:
    """The overrides Hydra saved for a job in `job_dir/.hydra/overrides.yaml` ({} if none)."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    return parse_overrides(OmegaConf.to_container(OmegaConf.load(path)) or [])
