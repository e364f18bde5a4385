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
from tunesmith.train import run as runs
from tunesmith.train.dpo import tokenize_pairs
from tunesmith.train.preference import load_preference_data, trl_pair_row
from tunesmith.train.setup import common_args, load_trainable, run_trainer


def orpo(cfg: RLHFConfig, callbacks: list[Any] | None = None) -> runs.RunResult:
    run_dir = runs.run_dir_for(cfg)
    log_file = runs.log_to_file(run_dir)
    resume_from = runs.checkpoint_to_resume(cfg, run_dir)

    data = load_preference_data(cfg, "preference", tokenize_pairs)
    model, device, dtype = load_trainable(cfg, data.base_folder)
    runs.save_config(cfg, run_dir, base_model_folder=str(data.base_folder), device=device, dtype=str(dtype),
                     train_pairs=len(data.train), skipped_rows=data.skipped)
    # no token counting: TRL's pair batches have no input_ids (see the module docstring)
    args = ORPOConfig(**common_args(cfg, run_dir, device, dtype, has_eval=data.eval is not None)
                      | {"include_num_input_tokens_seen": "no"}, beta=cfg.beta)
    trainer = run_trainer(cfg, run_dir, model, data.tokenizer, data.train, data.eval, device, dtype, resume_from,
                          callbacks, trainer_cls=RenderedORPOTrainer, args=args)
    final = runs.save_final(trainer, data.template, run_dir)
    log_file.close()
    return runs.result_from(trainer, run_dir, final, data.skipped)


class RenderedORPOTrainer(ORPOTrainer):
    """TRL's ORPOTrainer tokenizes text rows itself (and may add BOS/EOS); ours arrive rendered by Template, the
    renderer training and serving share, so a row only changes layout."""

    def tokenize_row(self, feature, model=None):
        return trl_pair_row(feature)
