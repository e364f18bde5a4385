"""`tunesmith rlhf --method M`: one entry, one file per method. The table maps a method to `module:function`, so a
method's dependencies (TRL's experimental trainers, reward plugins) are imported only when it runs."""

from __future__ import annotations

import importlib
from typing import Any

from tunesmith.config.rlhf import RLHFConfig
from tunesmith.errors import ConfigError

METHODS: dict[str, str] = {
    "dpo": "tunesmith.train.dpo:dpo",
    "kto": "tunesmith.train.kto:kto",
    "orpo": "tunesmith.train.orpo:orpo",
    "cpo": "tunesmith.train.cpo:cpo",
    "simpo": "tunesmith.train.cpo:cpo",  # SimPO is CPO with loss_type simpo and cpo_alpha 0 (TRL's recipe)
    "rm": "tunesmith.train.rm:rm",
    "grpo": "tunesmith.train.grpo:grpo",
    "ppo": "tunesmith.train.ppo:ppo",
}


def rlhf(cfg: RLHFConfig, callbacks: list[Any] | None = None):
    target = METHODS.get(cfg.method)
    if target is None:
        raise ConfigError(f"method: {cfg.method} is not available in this release yet; "
                          f"available: {', '.join(METHODS)}")
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)(cfg, callbacks=callbacks)
