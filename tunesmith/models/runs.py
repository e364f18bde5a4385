"""Read what a run folder recorded, so `--adapters runs/NAME/final` is enough for every later command."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from tunesmith.errors import ModelNotFoundError


@dataclass
class RunOutput:
    folder: Path  # runs/NAME/final (or a checkpoint)
    base_model: str  # what the run trained from: registry name, folder or hub id
    is_adapter: bool  # False for a full fine-tune: the folder is itself a model
    config: dict
    reft: bool = False  # LoReFT interventions (final/reft/, models/reft.py): applied to the base by hooks, never merged


def read_run_output(adapters: str | Path) -> RunOutput:
    folder = Path(adapters).expanduser()
    if not folder.is_dir():
        raise ModelNotFoundError(f"{folder}: adapter folder not found (expected runs/NAME/final)")
    is_adapter = (folder / "adapter_config.json").exists()
    reft = (folder / "reft" / "config.json").exists()
    if not is_adapter and not reft and not (folder / "config.json").exists():
        raise ModelNotFoundError(f"{folder}: holds neither an adapter (adapter_config.json) nor a model (config.json)")
    if not is_adapter and not reft:  # a full model: every command that reads a run generates with it, which rm's can't
        from tunesmith.models.load import refuse_scorer

        refuse_scorer(folder)
    config: dict = {}
    for candidate in (folder / "config.yaml", folder.parent / "config.yaml"):
        if candidate.exists():
            config = yaml.safe_load(candidate.read_text(encoding="utf-8")) or {}
            break
    base = config.get("model")
    if base is None and is_adapter:
        import json

        base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if base is None and reft:
        import json

        base = json.loads((folder / "reft" / "config.json").read_text()).get("base_model")
    if base is None and (is_adapter or reft):
        raise ModelNotFoundError(f"{folder}: no config.yaml beside it names the base model; pass --model")
    return RunOutput(folder, str(base or folder), is_adapter, config, reft)
