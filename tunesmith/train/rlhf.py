"""`tunesmith rlhf --method M`: one entry, one file per method."""

from __future__ import annotations

from typing import Any

from tunesmith.config.rlhf import RLHFConfig
from tunesmith.errors import ConfigError

AVAILABLE = ("dpo",)


def rlhf(cfg: RLHFConfig, callbacks: list[Any] | None = None):
    if cfg.method == "dpo":
        from tunesmith.train.dpo import dpo

        return dpo(cfg, callbacks=callbacks)
    raise ConfigError(f"method: {cfg.method} is not available in this release yet; available: {', '.join(AVAILABLE)}")
