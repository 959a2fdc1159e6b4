"""Networks (one general ConvNet builder) and the Classifier LightningModule that trains them.

`src.models.ConvNet` and `src.models.Classifier` load on first use: the config resolvers import
src.models.scaling, and a process that only composes configs (a sweep's launcher) must not pay
for importing torch.
"""

from __future__ import annotations

import importlib

_HOMES = {"Classifier": "src.models.classifier", "ConvNet": "src.models.convnet"}
__all__ = list(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
