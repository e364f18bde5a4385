"""What `--resume` may continue: the run as it was configured, and only while it has steps left.

    check_resume(cfg, run_dir, checkpoint)   # in open_run, before anything is written

Why: the Trainer restores the weights, optimizer, scheduler and data position from the checkpoint whatever the new
config says. A changed learning rate was ignored while config.yaml claimed it; a changed rank or tuner failed deep in
peft after config.yaml had been rewritten (so the run's own config no longer resumed it); and a run already at its
last step trained one more (the Trainer checks max_steps only after a step) and replaced final/.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from tunesmith.config.local_paths import with_absolute_paths
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.train.callbacks import MANIFEST
from tunesmith.train.launch import layout, world_size

# Keys that decide what the checkpoint holds or how its optimizer and data continue; the rest (logging, saving, where
# reports go, max_steps and epochs to train further, the layout over processes) may change on a resume. The batch
# counts as a whole: 2 processes of batch 2 resume 1 process of batch 4 (FSDP2 reshards its checkpoint).
SAME_ON_RESUME = ("model", "adapters", "continue_from", "replay", "task", "tuner", "method", "lora", "galore", "lisa",
                  "freeze", "reft", "longlora", "peft", "dp", "embedding", "reranker", "classification", "dataset",
                  "learning_rate", "lr_scheduler", "warmup_ratio", "weight_decay", "max_length", "packing", "seed",
                  "system", "loss_on", "dpo", "kto", "orpo", "simpo", "cpo", "ppo", "grpo", "rewards", "rollout")


class RunAlreadyFinished(TunesmithError):
    """--resume of a run that reached its last step: nothing to do, and nothing is touched."""

    exit_code = 0


def check_resume(cfg: Any, run_dir: Path, checkpoint: str | None) -> None:
    saved = _saved_config(run_dir)
    if saved is None:
        return
    checkpoint_dir = Path(checkpoint) if checkpoint is not None else None
    _refuse_changes(cfg, run_dir, saved, checkpoint_dir)
    if checkpoint_dir is not None and (run_dir / "final").is_dir():
        _refuse_finished(cfg, run_dir, checkpoint_dir, saved)


def _saved_config(run_dir: Path) -> dict[str, Any] | None:
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return saved if isinstance(saved, dict) else None


def _refuse_changes(cfg: Any, run_dir: Path, saved: dict[str, Any], checkpoint: Path | None) -> None:
    now = with_absolute_paths(cfg, cfg.model_dump(mode="json"), Path.cwd())  # as config.yaml was written
    # unset (None) on either side: chosen during the run (auto settings) or not known then; not a change
    changed = [(key, saved[key], now[key]) for key in SAME_ON_RESUME if key in now and key in saved
               and None not in (now[key], saved[key]) and now[key] != saved[key]]
    if checkpoint is not None:
        before, after = _global_batch(saved, written_by(checkpoint)), _global_batch(now, processes_now(cfg))
        if None not in (before, after) and before != after:
            changed.append(("batch_size x grad_accum x processes", before, after))
    if changed:
        listed = "; ".join(f"{key}: {_short(before)} -> {_short(after)}" for key, before, after in changed)
        raise ConfigError(f"resume: {run_dir} was trained with other settings ({listed}); a resume continues the run "
                          f"as {run_dir / 'config.yaml'} configures it (its checkpoint holds that optimizer, schedule "
                          f"and data order). Resume without changing them (-c {run_dir / 'config.yaml'} --resume), or "
                          "start a new run from it (--adapters RUN/final, or --continue-from RUN)")


def _global_batch(config: dict[str, Any], processes: int) -> int | None:
    """Samples per optimizer step over all processes (an outer launcher's too), where the config fixes it."""
    factors = [config.get("batch_size"), config.get("grad_accum"), processes]
    return math.prod(factors) if all(isinstance(f, int) and not isinstance(f, bool) for f in factors) else None


def written_by(checkpoint: Path) -> int:
    """The processes that wrote a checkpoint (its manifest)."""
    return json.loads((checkpoint / MANIFEST).read_text()).get("world_size", 1)


def processes_now(cfg: Any) -> int:
    """The processes of this run: the ranks started (an outer launcher's too), or those the launching process starts."""
    return world_size() if world_size() > 1 else layout(cfg).world_size


def _refuse_finished(cfg: Any, run_dir: Path, checkpoint: Path, saved: dict[str, Any]) -> None:
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return
    step, planned = int(state.get("global_step", 0)), int(state.get("max_steps", 0))
    if cfg.max_steps > 0:
        done = step >= cfg.max_steps
    else:  # by epochs: finished when the run reached its plan and the epochs asked are the ones planned
        done = planned > 0 and step >= planned and cfg.epochs == saved.get("epochs")
    if done:
        raise RunAlreadyFinished(f"{run_dir} already finished at step {step} ({run_dir / 'final'} is its model); "
                                 "nothing to resume. Raise --max-steps (or --epochs) to train further, or pass "
                                 "--overwrite instead of --resume to start over")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."
