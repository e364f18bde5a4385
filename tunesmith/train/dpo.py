"""DPO on preference pairs: the policy learns to prefer `chosen` over `rejected` relative to a reference model.
Run: tunesmith rlhf --method dpo -c examples/prd-assistant/dpo.yaml

The reference is the base model with the adapter switched off (peft), so no second copy is loaded when training
LoRA. Prompt and answers are rendered by our Template, as in SFT, so the pairs are scored on exactly the tokens the
served model sees; TRL's DPOTrainer does the rest (losses by `loss_type`, beta, metrics such as rewards/margins).
"""

from __future__ import annotations

from typing import Any

from trl import DPOTrainer

from tunesmith.config.rlhf import RLHFConfig
from tunesmith.data.rows import Preference, Problem
from tunesmith.templates import IGNORE, Template
from tunesmith.train.run import RunResult
from tunesmith.train.preference import train_pairs
from tunesmith.train.setup import common_args


def dpo(cfg: RLHFConfig, callbacks: list[Any] | None = None) -> RunResult:
    return train_pairs(cfg, callbacks, tokenize_pairs, RenderedDPOTrainer, dpo_args)


def tokenize_pairs(rows: list[Preference], template: Template, max_length: int, problems: list[Problem]) -> Any:
    """prompt_ids / chosen_ids / rejected_ids, each answer ending with the end-of-turn token (what TRL's collator
    takes). Pairs longer than max_length are problems, like SFT rows."""
    import datasets

    table: dict[str, list] = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    for row in rows:
        prompt = template.render_prompt(row.prompt)
        answers = [_answer_ids(template, row.prompt, text, len(prompt)) for text in (row.chosen, row.rejected)]
        longest = len(prompt) + max(len(a) for a in answers)
        if longest > max_length:
            problems.append(Problem(row.source, row.line, "chosen/rejected",
                                    f"{longest} tokens > max_length {max_length}; raise max_length or shorten the row"))
            continue
        table["prompt_ids"].append(prompt)
        table["chosen_ids"].append(answers[0])
        table["rejected_ids"].append(answers[1])
    return datasets.Dataset.from_dict(table)


def _answer_ids(template: Template, prompt: list[dict], answer: str, prompt_len: int) -> list[int]:
    ids, labels = template.render(prompt + [{"role": "assistant", "content": answer}], loss_on="last")
    return [i for i, label in zip(ids[prompt_len:], labels[prompt_len:]) if label != IGNORE]


class RenderedDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer re-tokenizes text with the chat template; ours arrives already rendered by Template (the
    renderer training and serving share), so dataset preparation only drops over-long pairs."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset


def dpo_args(cfg: RLHFConfig, run_dir, device: str, dtype: Any, has_eval: bool) -> Any:
    from trl import DPOConfig

    return DPOConfig(**common_args(cfg, run_dir, device, dtype, has_eval), beta=cfg.dpo.beta, loss_type=list(cfg.dpo.loss_type))
