"""Which of a sweep's jobs train as one fused model (src.fused), and the line that says so.

Jobs whose composed configs have the same `src.fused.fusion_key` build the same network shape
and differ only in what a member may hold for itself (seed, optimizer and scheduler settings,
label smoothing): they form one group, split into near-equal groups of at most `max_fused`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.fused import FUSABLE

FUSE_CHOICES = ("auto", "off")
# Members per group unless hydra.launcher.max_fused says otherwise. CPU: the gain of fusing K
# tutorial nets at batch 4 levels off from K=8 on (docs/fused.md, "Speed"), so 16 costs nothing
# and halves the groups. GPU: 16 until the GPU check measures it (a tiny net leaves a GPU mostly
# idle, so more may pay).
MAX_FUSED = {"cpu": 16, "gpu": 16}


def plan(keys: Sequence[str | None], max_fused: int) -> list[list[int]]:
    """Job indices grouped by equal key (None: never fused), in the order the jobs came, each
    key's jobs split into near-equal groups of at most `max_fused`."""
    if max_fused < 1:
        raise ValueError(f"hydra.launcher.max_fused must be at least 1, got {max_fused}")
    by_key: dict[str, list[int]] = {}
    order: list[list[int]] = []
    for i, key in enumerate(keys):
        if key is None:
            order.append([i])
        elif key in by_key:
            by_key[key].append(i)
        else:
            by_key[key] = [i]
            order.append(by_key[key])
    groups = []
    for members in order:
        parts = math.ceil(len(members) / max_fused)
        size, extra = divmod(len(members), parts)
        start = 0
        for p in range(parts):
            end = start + size + (p < extra)
            groups.append(members[start:end])
            start = end
    return groups


def spread(groups: list[list[int]], slots: int) -> list[list[int]]:
    """Split the largest groups in two until every slot has one: fusing must not leave a core
    or GPU slot idle that separate jobs would have used (2 jobs on 2 cores run side by side)."""
    groups = [list(g) for g in groups]
    while groups and len(groups) < slots:
        i = max(range(len(groups)), key=lambda g: len(groups[g]))
        if len(groups[i]) < 2:
            break
        half = (len(groups[i]) + 1) // 2
        groups[i : i + 1] = [groups[i][:half], groups[i][half:]]
    return groups


def flat(cfg: DictConfig) -> dict[str, Any]:
    """The config's leaves by dotted key, unresolved: a value that follows the seed or the run
    folder (`${seed}`, `${paths.output_dir}`) is the same text in every job, so two jobs differ
    exactly where their settings do."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{prefix}{i}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return out


def fusable(key: str, fusable_keys: Sequence[str] = FUSABLE) -> bool:
    """A member may hold this key for itself (a FUSABLE key or a key under a FUSABLE prefix)."""
    return key.startswith("paths.") or any(
        key.startswith(p) if p.endswith(".") else key == p or key.startswith(f"{p}.")
        for p in fusable_keys
    )


def differing(a: dict[str, Any], b: dict[str, Any], fusable_keys: Sequence[str]) -> list[str]:
    """The keys whose values keep two jobs apart."""
    return [
        k
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k) and not fusable(k, fusable_keys)
    ]


def describe(
    groups: list[list[int]],
    names: Sequence[str],
    flats: Sequence[dict[str, Any] | None],
    max_fused: int,
    fusable_keys: Sequence[str] = FUSABLE,
    why_alone: Sequence[str | None] = (),
) -> list[str]:
    """One line per group: its jobs, and why it is not part of an earlier group (what keeps a
    job from any group (why_alone[i]), else the keys that differ from the nearest group, or the
    max_fused cap)."""
    lines = []
    for g, members in enumerate(groups):
        jobs = ", ".join(names[i] for i in members)
        line = (
            f"group {g + 1}/{len(groups)}: fused {len(members)} jobs ({jobs})"
            if len(members) > 1
            else f"group {g + 1}/{len(groups)}: {jobs} alone"
        )
        first = flats[members[0]]
        reason = why_alone[members[0]] if why_alone else None
        if reason:
            line += f": never fused ({reason})"
        elif g and first is not None:
            reasons = [
                differing(first, flats[h[0]], fusable_keys)
                for h in groups[:g]
                if flats[h[0]] is not None
            ]
            nearest = min(reasons, key=len) if reasons else None
            if nearest == []:
                same = [
                    h
                    for h in groups
                    if flats[h[0]] is not None and not differing(first, flats[h[0]], fusable_keys)
                ]
                capped = math.ceil(sum(len(h) for h in same) / max_fused)  # the cap's groups
                line += (
                    f"; apart from the others by hydra.launcher.max_fused={max_fused}"
                    if len(same) <= capped
                    else f"; apart from the others to keep all {len(groups)} slots busy"
                )
            elif nearest:
                shown = ", ".join(nearest[:3]) + (
                    f" (+{len(nearest) - 3} more)" * (len(nearest) > 3)
                )
                line += f"; apart from the others by {shown}"
        elif first is None:
            line += "; runs in a process of its own (DDP)"
        lines.append(line)
    return lines
