"""The resolvers the configs use (${pid:}, ${cores:}, ${conv_widths:...}, ${auto_precision:...}).

Registered by whatever composes or resolves a config, before it does: the entry points
(src.cli), src.reproduce, the benchmarks and the tests. Registering twice is harmless.
"""

from __future__ import annotations

import os

from omegaconf import OmegaConf


def register_resolvers() -> None:
    from src.devices import auto_precision
    from src.models.scaling import conv_widths
    from src.threads import available_cores

    resolvers = {
        "auto_precision": auto_precision,
        # The process id makes run folders unique even for runs started in the same second.
        "pid": os.getpid,
        "cores": available_cores,
        # The general ConvNet preset (conf/model/convnet.yaml): its per-layer widths.
        "conv_widths": conv_widths,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
