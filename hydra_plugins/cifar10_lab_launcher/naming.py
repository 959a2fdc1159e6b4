"""Job folders named by what the sweep varies: `width=50,seed=2` rather than `3`.

The name depends only on the job's swept values, so relaunching the same sweep finds the folders
of the jobs that already finished. TensorBoard shows these names as run names.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser

# Characters kept in folder names; anything else (path separators, quotes, spaces) becomes "_".
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+\-\[\]@]")
_MAX_LEN = 120


def swept_keys(command_line: Sequence[str], job: Sequence[str]) -> list[str]:
    """Keys of `job` the sweep varies: a sweep on the command line (a=1,2), or set by the sweeper
    alone (hydra.sweeper.params, Optuna's trial values). Plain command-line values are fixed."""
    parser = OverridesParser.create()
    fixed = {
        o.get_key_element(): o
        for o in parser.parse_overrides([str(x) for x in command_line])
        if not o.is_sweep_override()
    }
    keys = []
    for override in parser.parse_overrides([str(x) for x in job]):
        key = override.get_key_element()
        if key.lstrip("+~").startswith(("hydra.", "hydra/")):
            continue
        if key not in fixed:
            keys.append(key)
    return keys


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """`model.width` -> `width`, unless two swept keys end alike (then the full key)."""
    bare = {k: k.lstrip("+~") for k in keys}
    last = {k: b.split(".")[-1] for k, b in bare.items()}
    counts: dict[str, int] = {}
    for name in last.values():
        counts[name] = counts.get(name, 0) + 1
    return {k: last[k] if counts[last[k]] == 1 else bare[k] for k in keys}


def values(job: Sequence[str], keys: Sequence[str]) -> dict[str, str]:
    """The job's value of each swept key, as the override wrote it."""
    parsed = {
        o.get_key_element(): o.get_value_element_as_str()
        for o in OverridesParser.create().parse_overrides([str(x) for x in job])
    }
    return {k: parsed[k] for k in keys if k in parsed}


def job_name(params: dict[str, str], fallback: str) -> str:
    """The folder name of one job: its swept values, in the sweep's order."""
    short = short_names(list(params))
    name = ",".join(f"{short[k]}={v}" for k, v in params.items()) or fallback
    name = _UNSAFE.sub("_", name)
    if len(name) > _MAX_LEN:  # file systems cap names at 255 bytes; keep them readable anyway
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[: _MAX_LEN - 9]}~{digest}"
    return name
