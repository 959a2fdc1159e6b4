"""The search space: Hydra's sweep syntax (hydra.sweeper.params and the command line) as Optuna
distributions, and a trial's values back as overrides.

    optimizer.lr: tag(log, interval(0.001, 0.3))   -> FloatDistribution(0.001, 0.3, log=True)
    model.depth: range(2, 7, 2)                     -> IntDistribution(2, 6, step=2)
    model.width: choice(16, 32, 64)                 -> CategoricalDistribution((16, 32, 64))
    model.hidden: choice([64], [128, 64])           -> categorical over the texts "[64]", ...
    model.padding: same                             -> fixed for every trial
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.errors import ConfigCompositionException

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

# What Optuna's categorical distribution can hold; other choices (lists) travel as override text.
_PLAIN = (type(None), bool, int, float, str)


def search_space(
    params: Mapping[str, Any], command_line: Sequence[str]
) -> tuple[dict[str, BaseDistribution], list[str]]:
    """The distributions to sample, and the overrides every trial gets as they are.

    A key on the command line replaces the same key of `params`: a sweep there (`seed=1,2,3`)
    is searched over, a plain value is fixed for the whole search.
    """
    parser = OverridesParser.create()
    given = parser.parse_overrides([str(a) for a in command_line])
    on_command_line = {o.get_key_element() for o in given}
    configured = parser.parse_overrides(
        [f"{k}={v}" for k, v in params.items() if k not in on_command_line]
    )
    space, fixed = {}, []
    for override in configured:
        key = override.get_key_element()
        if override.is_sweep_override():
            space[key] = distribution(override)
        else:
            fixed.append(f"{key}={override.get_value_element_as_str()}")
    for override in given:  # kept as typed, so the rerun command reads like the user's own
        if override.is_sweep_override():
            space[override.get_key_element()] = distribution(override)
        else:
            fixed.append(override.input_line)
    return space, fixed


def distribution(override: Override) -> BaseDistribution:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    sweep, key = override.value(), override.get_key_element()
    log = "log" in sweep.tags
    try:
        if isinstance(sweep, ChoiceSweep):
            if log:
                raise ValueError("tag(log, ...) needs an interval or a range, not a choice")
            return CategoricalDistribution([_choice(c) for c in sweep.list])
        if isinstance(sweep, RangeSweep):
            values = list(override.sweep_iterator())
            if not values:
                raise ValueError("the range is empty")
            if all(isinstance(v, int) for v in values):
                return IntDistribution(values[0], values[-1], log=log, step=int(sweep.step))
            return FloatDistribution(values[0], values[-1], log=log, step=float(sweep.step))
        if isinstance(sweep, IntervalSweep):
            if isinstance(sweep.start, int) and isinstance(sweep.end, int):
                return IntDistribution(sweep.start, sweep.end, log=log)
            return FloatDistribution(float(sweep.start), float(sweep.end), log=log)
    except ValueError as err:  # Optuna's own checks (low > high, log with a step, ...)
        raise ConfigCompositionException(f"cannot search {override.input_line}: {err}") from None
    raise ConfigCompositionException(
        f"cannot search {key}: use choice(...), range(...) or interval(...), optionally "
        f"tag(log, ...), got {override.input_line}"
    )


def _choice(value: Any) -> Any:
    return value if isinstance(value, _PLAIN) else json.dumps(value)


def as_override(key: str, value: Any) -> str:
    """`key=value` as Hydra reads it back to the same value."""
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    return f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"
