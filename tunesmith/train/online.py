"""What the online methods (grpo, ppo) share: the prompt table rendered by our Template, and the reward checks that
run before any weights load.

    table, train_ds, eval_ds, skipped, record = prompt_datasets(cfg, template)  # [(messages, columns, ids)], ...
    require_reward(cfg, rewards, "grpo")                                 # a reward is named, its model folder exists
    dry_run(rewards, train_ds, tokenizer)                                # every reward called once on real rows
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from tunesmith.config.rlhf import RLHFConfig
from tunesmith.data.clean_file import clean_rows
from tunesmith.data.limits import max_chars
from tunesmith.data.load import load_rows
from tunesmith.data.images import open_image
from tunesmith.data.rows import Problem
from tunesmith.data.vision import images_of, text_of
from tunesmith.errors import ConfigError, DataError
from tunesmith.templates import Template
from tunesmith.train.rewards.registry import ROW_KEY, RewardFn
from tunesmith.train.tokenize import length_problem
from tunesmith.train.continued import Continuation
from tunesmith.train.truncate import Cuts

# Dataset columns that would collide with the arguments TRL passes reward functions under these names
RESERVED = {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments"}


# -----------------------------------------------------------------------------
# Rewards: checked before weights load


def require_reward(cfg: RLHFConfig, rewards: list[RewardFn], method: str) -> None:
    """A run with nothing to reward stops here; a --reward-model that is not a model folder too."""
    if not rewards and not cfg.rewards.model and not getattr(cfg.grpo, "env", None):
        raise ConfigError(f"{method} needs a reward: --rewards.funcs NAME ... (built-ins: format, length, repetition, "
                          "accuracy; or yours with --rewards.plugin file.py) and/or --rewards.model FOLDER")
    if cfg.rewards.model and not (Path(cfg.rewards.model).expanduser() / "config.json").is_file():
        raise ConfigError(f"rewards.model: {cfg.rewards.model} is not a model folder (no config.json)")


def dry_run(rewards: list[RewardFn], train_ds: Any, tokenizer: Any) -> None:
    """Call every reward as TRL will (two rows x two answers, one of them empty) before any weights load, so a
    plugin that crashes, needs a missing column or returns the wrong shape fails now, naming its file and line."""
    from transformers import TrainerState

    prompts = [p for p in train_ds[:2]["prompt"] for _ in range(2)]
    completions = ["", "The answer is 42."] * (len(prompts) // 2)
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
    for fn in rewards:
        try:
            fn(prompts=prompts, completions=completions, completion_ids=ids, trainer_state=TrainerState(),
               log_extra=lambda *a: None, log_metric=lambda *a: None)
        except ConfigError:
            raise
        except Exception as err:  # a TunesmithError from the wrapper, already naming file and line
            raise ConfigError(f"{err} (checking the reward on the first rows with the answers {completions[:2]!r})") from None


# -----------------------------------------------------------------------------
# Prompts: rendered by our Template, carried to TRL by row index


def prompt_datasets(cfg: RLHFConfig, template: Template) -> tuple[list, Any, Any, int, dict]:
    """The prompt table [(conversation, columns, prompt ids)], the train/eval datasets TRL reads, the rows skipped and
    what config.yaml records (prompts --truncation drop left out).

    TRL needs a dataset whose `prompt` column it can hand back to us; ours holds each conversation as role/content
    messages with the row's index in the last one (ROW_KEY). The exact messages, tools and columns stay in the table,
    in Python: an Arrow table would add None for every key some other row has."""
    limit = max_chars(template.tokenizer, cfg.max_length) if cfg.truncation == "error" else None
    read = partial(load_rows, kind="prompts", seed=cfg.seed, encoding=cfg.encoding,
                   max_chars=limit)  # a prompt too long: refused untokenized
    data = read(cfg.dataset)
    if not hasattr(template, "render_images"):  # prompts with images need the VLM renderer (grpo: train/vision.py)
        from tunesmith.train.vision import refuse_images_for_text_model

        refuse_images_for_text_model(data.rows, cfg.model, cfg.method)
    data.rows, cleaned = clean_rows(cfg, data.rows)  # --dedupe, --redact-pii
    chosen = Continuation.select(cfg, data.rows, read)  # --continue-from: prompts the earlier runs never saw
    data.rows = chosen.rows
    chosen.save(cfg, data.rows)
    val = read(cfg.val_dataset) if cfg.val_dataset else None
    table: list = []
    cuts = Cuts(cfg.truncation, cfg.max_length)  # error or drop (the config refuses left/right for grpo and ppo)
    train_idx = _add_rows(table, data.rows, template, cfg, data.problems, cuts)
    skipped = data.raise_if_bad(cfg.skip_bad_rows)
    val_idx = []
    if val is not None:
        val_idx = _add_rows(table, val.rows, template, cfg, val.problems, cuts)
        skipped += val.raise_if_bad(cfg.skip_bad_rows)
    if not train_idx:
        raise DataError(f"{', '.join(cfg.dataset)}: no prompts left to train on")
    train_ds = _dataset(table, train_idx)
    eval_ds = _dataset(table, val_idx) if val_idx else None
    if eval_ds is None and cfg.val_split > 0:
        split = train_ds.train_test_split(test_size=cfg.val_split, seed=cfg.seed)
        train_ds, eval_ds = split["train"], split["test"]
    cuts.report()
    return table, train_ds, eval_ds, skipped, {"truncation": cuts.recorded(), **chosen.record, **cleaned}


def _add_rows(table: list, rows: list, template: Template, cfg: RLHFConfig, problems: list[Problem],
              cuts: Cuts) -> list[int]:
    added = []
    for row in rows:
        if hasattr(template, "render_images"):  # a VLM: the prompt with its images' tokens (templates/vision.py)
            pictures = [open_image(ref) for ref in images_of(row.messages)]
            ids = template.render_prompt_images(row.messages, pictures, tools=row.extra.get("tools"))
        else:
            ids = template.render_prompt(row.messages, tools=row.extra.get("tools"))
        too_long = length_problem(row, "prompt", len(ids), cfg.max_length, cfg.rollout.max_completion_length)
        if too_long:
            cuts.too_long += 1
            if cuts.mode == "drop":
                cuts.dropped += 1
            else:
                problems.append(too_long)
            continue
        columns = {k: v for k, v in row.extra.items() if k not in RESERVED}
        added.append(len(table))
        table.append((row.messages, columns, ids))
    return added


def _dataset(table: list, indices: list[int]) -> Any:
    import datasets

    prompts = []
    for i in indices:
        # text only (an Arrow column holds one type); a VLM's trainer puts the images back from the table
        messages = [{"role": m["role"], "content": text_of(m.get("content")) or ""} for m in table[i][0]]
        messages[-1][ROW_KEY] = i
        prompts.append(messages)
    return datasets.Dataset.from_dict({"prompt": prompts})
