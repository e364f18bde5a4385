"""What the offline preference methods (dpo, kto, orpo, cpo/simpo, rm) share: the data stage, from dataset specs to
rendered token ids, with every bad row reported before any weights load; the pair rendering (render_pairs, answer_ids),
so every method sees the same ids; and the row layout of TRL's older pair trainers (CPOTrainer, ORPOTrainer).

    data = load_preference_data(cfg, "preference", template, render_pairs)   # train/eval ids, rows skipped
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

from tunesmith.config.rlhf import RLHFConfig
from tunesmith.data.clean_file import clean_rows
from tunesmith.data.limits import max_chars
from tunesmith.data.load import load_rows
from tunesmith.data.rows import Preference, Problem
from tunesmith.templates import IGNORE, Template
from tunesmith.train.continued import Continuation
from tunesmith.train.labels import require_end_of_turn
from tunesmith.train.tokenize import Prepared
from tunesmith.train.truncate import Cuts


PreferenceData = Prepared  # train, eval, skipped, record (truncation counts for config.yaml)


def load_preference_data(cfg: RLHFConfig, kind: str, template: Template, tokenize: Callable[..., Any]) -> PreferenceData:
    """Rows of `kind` ("preference" or "kto") rendered by `tokenize(rows, template, max_length, problems)`; held-out
    rows from val_dataset, else val_split of the training rows. Bad rows stop the run here."""
    limit = max_chars(template.tokenizer, cfg.max_length) if cfg.truncation == "error" else None
    read = partial(load_rows, kind=kind, seed=cfg.seed, encoding=cfg.encoding, max_chars=limit)  # refused untokenized
    data = read(cfg.dataset)
    if not hasattr(template, "render_images"):  # rows with images need the VLM renderer (dpo: train/vision.py)
        from tunesmith.train.vision import refuse_images_for_text_model

        refuse_images_for_text_model(data.rows, cfg.model, cfg.method)
    data.rows, cleaned = clean_rows(cfg, data.rows)  # --dedupe, --redact-pii
    chosen = Continuation.select(cfg, data.rows, read)  # --continue-from: rows the earlier runs never saw (+ replay)
    data.rows = chosen.rows
    chosen.save(cfg, data.rows)
    val = read(cfg.val_dataset) if cfg.val_dataset else None
    cuts = Cuts(cfg.truncation, cfg.max_length, template.stop_token_ids)
    train = tokenize(data.rows, template, cfg.max_length, data.problems, cuts=cuts)
    skipped = data.raise_if_bad(cfg.skip_bad_rows)
    if cfg.method != "rm":  # the answers the policy learns to give must teach it to stop (a reward model only scores)
        answers = "chosen_ids" if "chosen_ids" in train.column_names else "completion_ids"
        require_end_of_turn(train[answers], template, cfg.dataset)
    evals = None
    if val is not None:
        evals = tokenize(val.rows, template, cfg.max_length, val.problems, cuts=cuts)
        skipped += val.raise_if_bad(cfg.skip_bad_rows)
    elif cfg.val_split > 0:
        split = train.train_test_split(test_size=cfg.val_split, seed=cfg.seed)
        train, evals = split["train"], split["test"]
    cuts.report()
    return Prepared(train, evals, skipped, {"truncation": cuts.recorded(), **chosen.record, **cleaned})


def render_pairs(rows: list[Preference], template: Template, max_length: int, problems: list[Problem],
                 cuts: Cuts | None = None) -> Any:
    """prompt_ids / chosen_ids / rejected_ids, each answer ending with the end-of-turn token (what TRL's collators
    take). Pairs longer than max_length are problems, like SFT rows, or cut per --truncation (`cuts`)."""
    import datasets

    cuts = cuts or Cuts("error", max_length, template.stop_token_ids)
    table: dict[str, list] = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    for row in rows:
        prompt = template.render_prompt(row.prompt)
        answers = [answer_ids(template, row.prompt, text, len(prompt)) for text in (row.chosen, row.rejected)]
        kept = cuts.pair(row, prompt, answers, problems, "chosen/rejected")
        if kept is None:
            continue
        prompt, answers = kept
        table["prompt_ids"].append(prompt)
        table["chosen_ids"].append(answers[0])
        table["rejected_ids"].append(answers[1])
    return datasets.Dataset.from_dict(table)


def answer_ids(template: Template, prompt: list[dict], answer: str, prompt_len: int) -> list[int]:
    """The ids of `answer` after `prompt`, through its end-of-turn token, as the conversation renders them."""
    ids, labels = template.render(prompt + [{"role": "assistant", "content": answer}], loss_on="last")
    return [i for i, label in zip(ids[prompt_len:], labels[prompt_len:]) if label != IGNORE]


def count_pair_tokens(trainer: Any, inputs: dict[str, Any]) -> None:
    """Trainer._track_num_input_tokens for CPO/ORPO pair batches, which carry chosen_*/rejected_* but no input_ids
    (the Trainer's own count finds nothing, and tokens/s read 0): the tokens the model reads, prompt + answer of both
    sides, padding left out, summed over the processes."""
    import torch

    tokens = sum(inputs[f"{side}_attention_mask"].sum() for side in ("chosen", "rejected"))
    tokens = torch.as_tensor(tokens, device=trainer.args.device, dtype=torch.int64)
    trainer.state.num_input_tokens_seen += trainer.accelerator.gather(tokens).sum().item()


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
