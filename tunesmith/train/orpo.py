"""ORPO on preference pairs: SFT and preference in one loss, no reference model. Loss = NLL of the chosen answer
- beta x log sigmoid(log odds(chosen) - log odds(rejected)), with length-averaged log-probabilities; beta is the
paper's lambda (0.1). Run: tunesmith rlhf --method orpo --dataset pairs.jsonl

Pairs are rendered by our Template, as in DPO. As in TRL, the NLL term covers the prompt tokens as well as the
chosen answer (TRL's ORPOTrainer masks only padding there); the odds ratio uses the answers alone.

Not reported: tokens/s (see cpo.py: TRL's pair batches have no input_ids for the Trainer to count).
"""

from __future__ import annotations

from typing import Any

from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from tunesmith.config.rlhf import RLHFConfig
from tunesmith.train.run import RunResult
from tunesmith.train.dpo import tokenize_pairs
from tunesmith.train.preference import train_pairs, trl_pair_row
from tunesmith.train.setup import common_args


def orpo(cfg: RLHFConfig, callbacks: list[Any] | None = None) -> RunResult:
    return train_pairs(cfg, callbacks, tokenize_pairs, RenderedORPOTrainer, orpo_args)


def orpo_args(cfg: RLHFConfig, run_dir: Any, device: str, dtype: Any, has_eval: bool) -> Any:
    # no token counting: TRL's pair batches have no input_ids (see the module docstring)
    return ORPOConfig(**common_args(cfg, run_dir, device, dtype, has_eval) | {"include_num_input_tokens_seen": "no"},
                      beta=cfg.orpo.beta)


class RenderedORPOTrainer(ORPOTrainer):
    """TRL's ORPOTrainer tokenizes text rows itself (and may add BOS/EOS); ours arrive rendered by Template, the
    renderer training and serving share, so a row only changes layout."""

    def tokenize_row(self, feature, model=None):
        return trl_pair_row(feature)
