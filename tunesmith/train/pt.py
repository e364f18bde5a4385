"""Continued pretraining on raw text: every token is trained.  Run: tunesmith pt -c pt.yaml

Texts get an EOS and are cut into max_length blocks (nothing dropped); packing (on by default) fills each batch."""

from __future__ import annotations

from typing import Any

from tunesmith.config import PTConfig
from tunesmith.data.clean_file import clean_rows
from tunesmith.data.load import load_rows
from tunesmith.train.continued import Continuation
from tunesmith.train.preflight import load_template, preflight, trainable_report
from tunesmith.train.run import RunResult, open_run
from tunesmith.train.setup import load_trainable, run_trainer
from tunesmith.train.speed import prepare_model
from tunesmith.train.tokenize import Prepared, tokenize_pt
from tunesmith.train.truncate import Cuts


def pt(cfg: PTConfig, callbacks: list[Any] | None = None) -> RunResult:
    with open_run(cfg) as run:
        template, base_folder = load_template(cfg)

        data = pt_data(cfg, template)
        train_ds, eval_ds, skipped = data.train, data.eval, data.skipped
        plan = preflight(cfg, base_folder, rows=len(train_ds), longest=max(map(len, train_ds["input_ids"])))
        model, device, dtype = load_trainable(cfg, base_folder)
        chosen = prepare_model(cfg, model, device, dtype)  # on a GPU: varlen attention for the packed blocks, kernels
        run.save_config(base_model_folder=str(base_folder), train_blocks=len(train_ds), skipped_rows=skipped,
                        **data.record, speed=chosen, **plan.recorded(), **trainable_report(cfg, model))
        trainer = run_trainer(cfg, run.dir, model, template.tokenizer, train_ds, eval_ds, device, dtype,
                              run.resume_from, callbacks)
        final = run.save_final(trainer, template)
        return run.result(trainer, final, skipped)


def pt_data(cfg: PTConfig, template: Any) -> Prepared:
    """Train blocks, eval blocks or None, rows skipped, truncation counts: text + EOS cut into max_length blocks
    (truncation split), or each text refused, left out or cut alone (error, drop, left, right); cached."""
    data = load_rows(cfg.dataset, kind="pt", seed=cfg.seed, encoding=cfg.encoding)  # long texts are cut, not refused
    data.rows, cleaned = clean_rows(cfg, data.rows)  # --dedupe, --redact-pii
    chosen = Continuation.select(cfg, data.rows, lambda specs: load_rows(specs, kind="pt", encoding=cfg.encoding))
    data.rows = chosen.rows
    chosen.save(cfg, data.rows)
    val = load_rows(cfg.val_dataset, kind="pt", seed=cfg.seed, encoding=cfg.encoding) if cfg.val_dataset else None
    cuts = Cuts(cfg.truncation, cfg.max_length, template.stop_token_ids)
    train_ds = tokenize_pt(data.rows, template, cfg.max_length, cuts, data.problems)
    eval_ds = tokenize_pt(val.rows, template, cfg.max_length, cuts, val.problems) if val else None
    skipped = data.raise_if_bad(cfg.skip_bad_rows) + (val.raise_if_bad(cfg.skip_bad_rows) if val else 0)
    if eval_ds is None and cfg.val_split > 0:
        split = train_ds.train_test_split(test_size=cfg.val_split, seed=cfg.seed)
        train_ds, eval_ds = split["train"], split["test"]
    cuts.report()
    record = {"truncation": cuts.recorded()} if cfg.truncation != "split" else {}
    return Prepared(train_ds, eval_ds, skipped, record | chosen.record | cleaned)
