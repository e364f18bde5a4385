"""Supervised fine-tuning on conversations (LoRA, QLoRA, DoRA or full weights).  Run: tunesmith sft -c sft.yaml

Departs from TRL's defaults: the loss mask comes from our renderer (exact for any chat template, no generation
markers needed), bad rows stop the run before the model loads, and on a GPU the fast path is the default
(train/speed.py): padding-free packing with PyTorch's varlen flash kernel, liger kernels when installed, fused AdamW,
and gradient checkpointing only when the memory plan needs it, on as few layers as fit (elsewhere it is off unless
asked for: small models do not need it). train/preflight.py makes those choices, the same for every command.
"""

from __future__ import annotations

from typing import Any

from tunesmith.config import SFTConfig
from tunesmith.data.load import load_rows
from tunesmith.train.preflight import load_template, preflight, trainable_report
from tunesmith.train.run import RunResult, open_run
from tunesmith.train.setup import load_trainable, run_trainer
from tunesmith.train.speed import prepare_model
from tunesmith.train.tokenize import tokenize_sft


def sft(cfg: SFTConfig, callbacks: list[Any] | None = None) -> RunResult:
    with open_run(cfg) as run:
        template, base_folder = load_template(cfg)

        train_ds, eval_ds, skipped = sft_data(cfg, template)  # a bad row stops the run before any weights load
        plan = preflight(cfg, base_folder, rows=len(train_ds))  # speed choices, memory plan: what config.yaml records
        model, device, dtype = load_trainable(cfg, base_folder)
        chosen = prepare_model(cfg, model, device, dtype)  # the attention and kernels this machine runs
        run.save_config(base_model_folder=str(base_folder), train_rows=len(train_ds), skipped_rows=skipped,
                        speed=chosen, **plan.recorded(), **trainable_report(cfg, model))
        trainer = run_trainer(cfg, run.dir, model, template.tokenizer, train_ds, eval_ds, device, dtype,
                              run.resume_from, callbacks)
        final = run.save_final(trainer, template)
        return run.result(trainer, final, skipped)


def sft_data(cfg: SFTConfig, template: Any) -> tuple[Any, Any, int]:
    """(train, eval or None, rows skipped): every row checked, rendered by the template and cached (train/tokenize.py)."""
    subs = {"name": cfg.model_name, "author": cfg.model_author}
    data = load_rows(cfg.dataset, kind="sft", seed=cfg.seed, substitutions=subs)
    val = load_rows(cfg.val_dataset, kind="sft", seed=cfg.seed, substitutions=subs) if cfg.val_dataset else None
    train_ds, too_long = tokenize_sft(data.rows, template, cfg.loss_on, cfg.max_length)
    data.problems += too_long
    skipped = data.raise_if_bad(cfg.skip_bad_rows)
    eval_ds = None
    if val is not None:
        eval_ds, val_too_long = tokenize_sft(val.rows, template, cfg.loss_on, cfg.max_length)
        val.problems += val_too_long
        skipped += val.raise_if_bad(cfg.skip_bad_rows)
    elif cfg.val_split > 0:
        split = train_ds.train_test_split(test_size=cfg.val_split, seed=cfg.seed)
        train_ds, eval_ds = split["train"], split["test"]
    return train_ds, eval_ds, skipped
