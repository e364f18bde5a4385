"""`tunesmith rlhf --method M`: one entry, one file per method. The table maps a method to `module:function`, so a
method's dependencies (TRL's experimental trainers, reward plugins) are imported only when it runs."""

from __future__ import annotations

import importlib
from typing import Any

from tunesmith.config.rlhf import RLHFConfig
from tunesmith.errors import ConfigError

METHODS: dict[str, str] = {
    "dpo": "tunesmith.train.dpo:dpo",
}


def rlhf(cfg: RLHFConfig, callbacks: list[Any] | None = None):
    target = METHODS.get(cfg.method)
    if target is None:
        raise ConfigError(f"method: {cfg.method} is not available in this release yet; "
                          f"available: {', '.join(METHODS)}")
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)(cfg, callbacks=callbacks)
