"""What the offline preference methods (dpo, kto, orpo, cpo/simpo, rm) share: the data stage, from dataset specs to
rendered token ids, with every bad row reported before any weights load; the run of the pair methods (dpo, cpo/simpo,
orpo), which differ only in TRL's trainer and its arguments; and the row layout of TRL's older pair trainers
(CPOTrainer, ORPOTrainer). Pairs are rendered by dpo.tokenize_pairs, so every method sees the same ids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tunesmith.config.rlhf import RLHFConfig
from tunesmith.data.load import load_rows
from tunesmith.errors import DataError
from tunesmith.templates import IGNORE, Template
from tunesmith.train.run import RunResult, open_run
from tunesmith.train.setup import load_tokenizer_first, load_trainable, run_trainer


@dataclass
class PreferenceData:
    tokenizer: Any
    base_folder: Path
    template: Template
    train: Any  # datasets.Dataset of token ids
    eval: Any | None
    skipped: int


def load_preference_data(cfg: RLHFConfig, kind: str, tokenize: Callable[..., Any]) -> PreferenceData:
    """Rows of `kind` ("preference" or "kto") rendered by `tokenize(rows, template, max_length, problems)`; held-out
    rows from val_dataset, else val_split of the training rows."""
    data = load_rows(cfg.dataset, kind=kind, seed=cfg.seed)
    val = load_rows(cfg.val_dataset, kind=kind, seed=cfg.seed) if cfg.val_dataset else None
    tokenizer, base_folder = load_tokenizer_first(cfg)
    template = Template(tokenizer, default_system=cfg.system)
    train = tokenize(data.rows, template, cfg.max_length, data.problems)
    skipped = data.raise_if_bad(cfg.skip_bad_rows)
    evals = None
    if val is not None:
        evals = tokenize(val.rows, template, cfg.max_length, val.problems)
        skipped += val.raise_if_bad(cfg.skip_bad_rows)
    elif cfg.val_split > 0:
        split = train.train_test_split(test_size=cfg.val_split, seed=cfg.seed)
        train, evals = split["train"], split["test"]
    if len(train) == 0:
        raise DataError(f"{', '.join(cfg.dataset)}: no rows left to train on")
    return PreferenceData(tokenizer, base_folder, template, train, evals, skipped)


def train_pairs(cfg: RLHFConfig, callbacks: list[Any] | None, tokenize: Callable[..., Any], trainer_cls: Any,
                make_args: Callable[..., Any]) -> RunResult:
    """One pair method's run: pairs rendered by `tokenize`, weights, config.yaml, `trainer_cls` with
    `make_args(cfg, run.dir, device, dtype, has_eval)`, final/."""
    with open_run(cfg) as run:
        data = load_preference_data(cfg, "preference", tokenize)
        model, device, dtype = load_trainable(cfg, data.base_folder)
        run.save_config(base_model_folder=str(data.base_folder), device=device, dtype=str(dtype),
                        train_pairs=len(data.train), skipped_rows=data.skipped)
        args = make_args(cfg, run.dir, device, dtype, has_eval=data.eval is not None)
        trainer = run_trainer(cfg, run.dir, model, data.tokenizer, data.train, data.eval, device, dtype, run.resume_from,
                              callbacks, trainer_cls=trainer_cls, args=args)
        final = run.save_final(trainer, data.template)
        return run.result(trainer, final, data.skipped)


def trl_pair_row(feature: dict[str, list[int]]) -> dict[str, list[int]]:
    """One row in the layout CPOTrainer/ORPOTrainer build in their tokenize_row, from our rendered ids: prompt_*,
    and chosen_* / rejected_* holding prompt + answer, with labels -100 over the prompt."""
    prompt = feature["prompt_ids"]
    row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for side in ("chosen", "rejected"):
        answer = feature[f"{side}_ids"]
        row[f"{side}_input_ids"] = prompt + answer
        row[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
        row[f"{side}_labels"] = [IGNORE] * len(prompt) + answer
    return row
