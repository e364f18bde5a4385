"""What the encoder recipes (embedding.py, reranker.py, classifier.py) share: their rows, TrainingArguments, the
adapter or full weights that train, and the card saved beside the weights.

    rows, val_rows, skipped = encoder_rows(cfg)              # every row checked: bad rows stop the run here
    plan = preflight(cfg, base, rows=len(rows))              # train/preflight.py, as for every training command
    model = make_trainable(cfg, model, heads)                 # LoRA (peft) over a frozen base, or every weight
    args = encoder_args(SentenceTransformerTrainingArguments, cfg, run.dir, plan, has_eval=...)
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from tunesmith.data.load import load_rows
from tunesmith.models import encoders
from tunesmith.train.setup import common_args

log = logging.getLogger("tunesmith")
DATA_KIND = {"embedding": "embedding", "reranker": "reranker", "classification": "classification"}


def encoder_rows(cfg: Any) -> tuple[list[Any], list[Any] | None, int]:
    """(train rows, held-out rows or None, rows skipped). val_dataset, else a val_split share of the rows (seeded)."""
    kind = DATA_KIND[cfg.task]
    data = load_rows(cfg.dataset, kind=kind, seed=cfg.seed, encoding=cfg.encoding)
    skipped = data.raise_if_bad(cfg.skip_bad_rows)
    rows, val = list(data.rows), None
    if cfg.val_dataset:
        held = load_rows(cfg.val_dataset, kind=kind, seed=cfg.seed, encoding=cfg.encoding)
        skipped += held.raise_if_bad(cfg.skip_bad_rows)
        val = list(held.rows)
    elif cfg.val_split > 0 and len(rows) > 1:
        random.Random(cfg.seed).shuffle(rows)
        n = max(1, round(cfg.val_split * len(rows)))
        val, rows = rows[:n], rows[n:]
    return rows, val, skipped


def before_preflight(cfg: Any) -> None:
    """Choices preflight would otherwise make for a causal LM: no packing (each text is embedded apart); activation
    checkpointing only when asked for (the memory plan of encoders is plan/encoders.py's)."""
    cfg.packing = False
    if cfg.gradient_checkpointing is None:
        cfg.gradient_checkpointing = False


def make_trainable(cfg: Any, model: Any, task: str, peft_host: Any = None) -> Any:
    """tuner full: every weight trains. lora/dora: a peft adapter on `peft_host` (the sentence-transformers model, or
    the transformers model of a classifier) over the frozen base; a freshly initialised head trains whole."""
    if cfg.tuner == "full":
        return model
    host = peft_host if peft_host is not None else model
    heads = encoders.new_head_modules(model) if task != "embedding" else []
    config = encoders.lora_config(cfg.lora, cfg.tuner, task, heads)
    if hasattr(host, "add_adapter") and task != "classification":
        host.add_adapter(config)  # sentence-transformers: peft inside its Transformer module
        return model
    from peft import get_peft_model

    return get_peft_model(host, config)


def encoder_args(args_cls: Any, cfg: Any, run_dir: Path, plan: Any, has_eval: bool, **extra: Any) -> Any:
    """The TrainingArguments of every training command (train/setup.py's common_args), minus what only TRL reads."""
    args = common_args(cfg, run_dir, plan.device, plan.dtype, has_eval)
    args.pop("max_length", None)  # TRL's; an encoder's length cap is on the model (max_seq_length) or the tokenizer
    args["include_num_input_tokens_seen"] = "no"  # counts `input_ids`; these collators name inputs per column
    args["neftune_noise_alpha"] = None
    return args_cls(**args, **extra)


class TaskCard:
    """Saved into final/ (as a chat run saves its template): what the folder is, so eval and deploy load it right."""

    def __init__(self, task: str, base_model: Path, **details: Any):
        self.card = {"task": task, "base_model": str(base_model), **details}

    def save(self, folder: Path) -> None:
        encoders.write_task(Path(folder), self.card)
