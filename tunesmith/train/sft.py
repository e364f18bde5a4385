"""Supervised fine-tuning on conversations (LoRA, QLoRA, DoRA or full weights).  Run: tunesmith sft -c sft.yaml

Departs from TRL's defaults: the loss mask comes from our renderer (exact for any chat template, no generation
markers needed), bad rows stop the run before the model loads, and on a GPU the fast path is the default
(train/speed.py): padding-free packing with PyTorch's varlen flash kernel, liger kernels when installed, fused AdamW,
and gradient checkpointing only when the memory plan needs it, on as few layers as fit (elsewhere it is off unless
asked for: small models do not need it). train/preflight.py makes those choices, the same for every command.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from tunesmith.config import SFTConfig
from tunesmith.data.clean_file import clean_rows
from tunesmith.data.limits import max_chars
from tunesmith.data.load import load_rows
from tunesmith.errors import ConfigError
from tunesmith.train.continued import Continuation
from tunesmith.train.labels import require_end_of_turn
from tunesmith.train.preflight import load_template, preflight, trainable_report
from tunesmith.train.private import record_privacy, train_private
from tunesmith.train.run import RunResult, open_run
from tunesmith.train.setup import load_trainable, run_trainer, trl_args
from tunesmith.train.speed import prepare_model
from tunesmith.train.tokenize import Prepared, tokenize_sft
from tunesmith.train.truncate import Cuts
from tunesmith.train.vision import VisionRun, refuse_images_for_text_model


def sft(cfg: SFTConfig, callbacks: list[Any] | None = None) -> RunResult:
    with open_run(cfg) as run:
        template, base_folder = load_template(cfg)
        vlm = VisionRun.start(cfg, template, base_folder)  # a vision-language model: train/vision.py
        if vlm is not None:
            template = vlm.template

        data = sft_data(cfg, template, vlm)  # a bad row stops the run before any weights load
        train_ds, eval_ds, skipped = data.train, data.eval, data.skipped
        watch = None
        if cfg.eval_dataset:  # generation metrics at each eval step (train/eval_callback.py); its rows checked here
            from tunesmith.train.eval_callback import GenerationEval

            watch = GenerationEval(cfg, template, run.dir)
        # speed choices and the memory plan (what config.yaml records), for batches as long as the data's longest
        # sample (a VLM's pictures add tokens the text's ids do not show: planned at max_length)
        longest = max(map(len, train_ds["input_ids"])) if vlm is None else None
        plan = preflight(cfg, base_folder, rows=len(train_ds), longest=longest)
        if vlm is None:
            model, device, dtype = load_trainable(cfg, base_folder)
            chosen = prepare_model(cfg, model, device, dtype)  # the attention and kernels this machine runs
        else:  # its collator packs (padding-free, positions per sample), not TRL's packing
            model, device, dtype = vlm.load_trainable(cfg, base_folder)
            chosen = prepare_model(cfg, model, device, dtype, own_collator=True)
            data.record.update(vlm.recorded())
        run.save_config(base_model_folder=str(base_folder), train_rows=len(train_ds), skipped_rows=skipped,
                        **data.record, speed=chosen, **plan.recorded(), **trainable_report(cfg, model))
        train = train_private if cfg.dp.epsilon is not None else run_trainer  # DP-SGD: Opacus (train/private.py)
        extra: dict[str, Any] = {}
        if vlm is not None:
            if cfg.dp.epsilon is not None:
                raise ConfigError("dp: differential privacy is not supported for vision-language models")
            extra = {"trainer_cls": vlm.trainer_cls(model, vlm.packing),
                     "args": VisionRun.args(trl_args(cfg, run.dir, device, dtype, has_eval=eval_ds is not None,
                                                      own_collator=True))}
        trainer = train(cfg, run.dir, model, template.tokenizer, train_ds, eval_ds, device, dtype, run.resume_from,
                        [*(callbacks or []), *([watch] if watch else [])], **extra)
        final = run.save_final(trainer, template)
        if cfg.dp.epsilon is not None:
            record_privacy(run, trainer, final)  # the epsilon spent: config.yaml, metrics.jsonl, final/README.md
        result = run.result(trainer, final, skipped)
    if watch is not None:
        watch.check_gate()  # --eval-gate: a non-zero exit, after the run is saved
    return result


def sft_data(cfg: SFTConfig, template: Any, vlm: VisionRun | None = None) -> Prepared:
    """Train and eval datasets, rows skipped, and the truncation counts: every row checked, rendered by the template
    and cached (train/tokenize.py), cut or left out per --truncation (train/truncate.py)."""
    # With --truncation error a row too long for max_length is refused before the tokenizer sees it (a 50 MB line
    # would take minutes and GBs); the other modes need its tokens to cut it.
    limit = max_chars(template.tokenizer, cfg.max_length) if cfg.truncation == "error" else None
    read = partial(load_rows, kind="sft", seed=cfg.seed, encoding=cfg.encoding,
                   substitutions={"name": cfg.model_name, "author": cfg.model_author}, max_chars=limit)
    data = read(cfg.dataset)
    data.refuse_undesirable_answers()  # KTO rows labelled false
    data.rows, cleaned = clean_rows(cfg, data.rows)  # --dedupe, --redact-pii
    chosen = Continuation.select(cfg, data.rows, read)  # --continue-from: rows the earlier runs never saw (+ replay)
    data.rows = chosen.rows
    val = read(cfg.val_dataset) if cfg.val_dataset else None
    if val is not None:
        val.refuse_undesirable_answers()
    held: list = []
    if val is None and cfg.val_split > 0:  # rows, not samples: a conversation's per-turn samples stay on one side
        data.rows, held = split_rows(data.rows, cfg.val_split, cfg.seed)
    chosen.save(cfg, data.rows)  # seen_rows.json: what a run continuing from this one will skip
    cuts = Cuts(cfg.truncation, cfg.max_length, template.stop_token_ids)
    tokenize = tokenize_sft
    if vlm is not None:  # images: ids with the processor's image tokens, image references beside them
        def tokenize(rows, template, loss_on, max_length, cuts):
            ds, problems = vlm.tokenize(rows, loss_on, max_length, cuts)
            return (vlm.pack(ds, max_length) if vlm.packing else ds), problems
    else:
        refuse_images_for_text_model(data.rows + (val.rows if val is not None else []), cfg.model)
    train_ds, too_long = tokenize(data.rows, template, cfg.loss_on, cfg.max_length, cuts=cuts)
    data.problems += too_long
    eval_ds = None
    if held:
        eval_ds, held_too_long = tokenize(held, template, cfg.loss_on, cfg.max_length, cuts=cuts)
        data.problems += held_too_long
    skipped = data.raise_if_bad(cfg.skip_bad_rows)
    require_end_of_turn(train_ds["labels"], template, cfg.dataset)  # a model that never learns to stop: refused
    if val is not None:
        eval_ds, val_too_long = tokenize(val.rows, template, cfg.loss_on, cfg.max_length, cuts=cuts)
        val.problems += val_too_long
        skipped += val.raise_if_bad(cfg.skip_bad_rows)
    cuts.report()
    return Prepared(train_ds, eval_ds, skipped, {"truncation": cuts.recorded(), **chosen.record, **cleaned})


def split_rows(rows: list, share: float, seed: int) -> tuple[list, list]:
    """(train rows, held-out rows): ceil(share x rows) held out, drawn with the seed, each side in the data's order.
    Split before tokenizing: a template that rewrites past turns (Qwen3) makes one sample per assistant turn, and
    samples of one conversation on both sides would leak its earlier turns into the eval loss."""
    import math
    import random

    count = math.ceil(share * len(rows))
    if count >= len(rows):
        raise ConfigError(f"val_split: {share} of {len(rows)} rows leaves none to train on; lower val_split or give "
                          "val_dataset")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]
