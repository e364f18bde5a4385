"""Supervised fine-tuning on conversations (LoRA, QLoRA, DoRA or full weights).  Run: tunesmith sft -c sft.yaml

Departs from TRL's defaults: the loss mask comes from our renderer (exact for any chat template, no generation
markers needed), bad rows stop the run before the model loads, and on a GPU the fast path is the default
(train/speed.py): padding-free packing with PyTorch's varlen flash kernel, liger kernels when installed, fused AdamW,
and gradient checkpointing only when the memory plan needs it, on as few layers as fit (elsewhere it is off unless
asked for: small models do not need it).
"""

from __future__ import annotations

from typing import Any

from tunesmith.config import SFTConfig
from tunesmith.data.load import load_rows
from tunesmith.errors import DataError
from tunesmith.templates import Template
from tunesmith.train.run import RunResult, open_run
from tunesmith.train.setup import load_tokenizer_first, load_trainable, run_trainer
from tunesmith.train.speed import prepare_model
from tunesmith.train.tokenize import tokenize_sft


def sft(cfg: SFTConfig, callbacks: list[Any] | None = None) -> RunResult:
    with open_run(cfg) as run:
        # Data first: a bad row stops the run before any weights load.
        subs = {"name": cfg.model_name, "author": cfg.model_author}
        data = load_rows(cfg.dataset, kind="sft", seed=cfg.seed, substitutions=subs)
        val = load_rows(cfg.val_dataset, kind="sft", seed=cfg.seed, substitutions=subs) if cfg.val_dataset else None

        tokenizer, base_folder = load_tokenizer_first(cfg)
        template = Template(tokenizer, default_system=cfg.system)
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
        if len(train_ds) == 0:
            raise DataError(f"{', '.join(cfg.dataset)}: no rows left to train on")

        model, device, dtype = load_trainable(cfg, base_folder)
        speed = prepare_model(cfg, model, device, dtype)  # fills packing left unset; the attention and kernels chosen
        run.save_config(base_model_folder=str(base_folder), device=device, dtype=str(dtype),
                        train_rows=len(train_ds), skipped_rows=skipped, speed=speed)
        trainer = run_trainer(cfg, run.dir, model, tokenizer, train_ds, eval_ds, device, dtype, run.resume_from, callbacks)
        final = run.save_final(trainer, template)
        return run.result(trainer, final, skipped)
