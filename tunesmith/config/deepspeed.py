"""A DeepSpeed setting as `--deepspeed` names it: one of the shipped presets or the user's JSON file. The training
launcher hands the JSON to transformers (train/launch.py); `tunesmith plan` reads its ZeRO stage and offload from it."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

from tunesmith.errors import ConfigError

DEEPSPEED_PRESETS = ("zero1", "zero2", "zero3", "zero2-offload", "zero3-offload")


def deepspeed_config(spec: str) -> dict:
    """A shipped preset (its "auto" values filled by transformers from our config) or the user's JSON file."""
    if spec in DEEPSPEED_PRESETS:
        text = importlib.resources.files("tunesmith.train").joinpath(f"deepspeed/{spec}.json").read_text()
        return json.loads(text)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"deepspeed: {spec} is neither a preset ({', '.join(DEEPSPEED_PRESETS)}) nor a JSON file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None


def zero_layout(spec: str) -> tuple[int, bool]:
    """(ZeRO stage, whether optimizer states or weights live off the GPU) of a preset or JSON file."""
    zero = deepspeed_config(spec).get("zero_optimization") or {}
    offloaded = any((zero.get(part) or {}).get("device") in ("cpu", "nvme")
                    for part in ("offload_optimizer", "offload_param"))
    return int(zero.get("stage", 0)), offloaded
