"""The run folder: where it is, what it recorded, which checkpoint to resume, and the final output.

runs/NAME/
  config.yaml     every default filled in, plus library versions
  metrics.jsonl   loss.png   tb/ (TensorBoard)   train.log
  checkpoint-N/   HF Trainer layout + tunesmith_manifest.json once complete
  final/          adapter (or full model) + tokenizer + chat template
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunesmith.errors import ConfigError
from tunesmith.train.callbacks import MANIFEST, is_complete
from tunesmith.versions import installed_versions

# whose versions config.yaml records
TRAINING_PACKAGES = ("tunesmith", "torch", "transformers", "trl", "peft", "accelerate", "datasets")


@dataclass
class RunResult:
    run_dir: Path
    final_dir: Path
    steps: int
    first_loss: float | None
    last_loss: float | None
    skipped_rows: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)


def run_dir_for(cfg: Any) -> Path:
    """The run folder; refuses to write over an earlier run unless asked to resume or overwrite."""
    if cfg.output_dir is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        cfg.output_dir = f"runs/{cfg.command}-{stamp}"
    path = Path(cfg.output_dir)
    has_run = path.is_dir() and (any(path.glob("checkpoint-*")) or (path / "final").exists())
    if has_run and not cfg.resume and not cfg.overwrite:
        raise ConfigError(f"output_dir: {path} already holds a run; pass --resume to continue it, --overwrite to "
                          "start over, or choose another --output-dir")
    if has_run and cfg.overwrite and not cfg.resume:
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoint_to_resume(cfg: Any, run_dir: Path) -> str | None:
    """true -> the newest complete checkpoint (partial ones from a killed run are set aside); a path -> that."""
    if not cfg.resume:
        return None
    if isinstance(cfg.resume, str):
        path = Path(cfg.resume)
        if not is_complete(path):
            raise ConfigError(f"resume: {path} is not a complete checkpoint (no valid {MANIFEST})")
        return str(path)
    steps = sorted((int(p.name.split("-")[1]), p) for p in run_dir.glob("checkpoint-*") if p.name.split("-")[1].isdigit())
    for _, path in reversed(steps):
        if is_complete(path):
            return str(path)
        logging.getLogger("tunesmith").warning("%s is incomplete (killed while saving); setting it aside", path)
        path.rename(path.with_name(f"incomplete-{path.name}-{os.getpid()}"))
    logging.getLogger("tunesmith").warning("resume: no complete checkpoint in %s; starting from step 0", run_dir)
    return None


def save_config(cfg: Any, run_dir: Path, **resolved: Any) -> None:
    """config.yaml: the validated config with every default, plus what was resolved and the library versions."""
    data = cfg.model_dump(mode="json")
    data["_resolved"] = resolved | {"versions": installed_versions(TRAINING_PACKAGES), "command": cfg.command}
    _atomic_write(run_dir / "config.yaml", yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def save_final(trainer: Any, template: Any, run_dir: Path) -> Path:
    """final/: written to a staging folder and renamed, so it is either whole or absent."""
    final = run_dir / "final"
    staging = Path(tempfile.mkdtemp(prefix=".final-", dir=run_dir))
    trainer.save_model(str(staging))
    template.save(staging)
    shutil.copy(run_dir / "config.yaml", staging / "config.yaml")
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    return final


def result_from(trainer: Any, run_dir: Path, final: Path, skipped: int) -> RunResult:
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    summary = next((h for h in reversed(trainer.state.log_history) if "train_loss" in h), {})
    return RunResult(run_dir, final, trainer.state.global_step, losses[0] if losses else None,
                     losses[-1] if losses else None, skipped, summary)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def log_to_file(run_dir: Path) -> logging.Handler:
    """Mirror tunesmith's and transformers' log records into runs/NAME/train.log."""
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("tunesmith", "transformers", "trl", "peft"):
        lg = logging.getLogger(name)
        for console in lg.handlers:  # the console keeps warnings only; the file gets INFO too
            console.setLevel(max(console.level, logging.WARNING))
        lg.addHandler(handler)
        lg.setLevel(min(lg.level or logging.INFO, logging.INFO))
    return handler
