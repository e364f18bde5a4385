"""ORPO on preference pairs: SFT and preference in one loss, no reference model. Loss = NLL of the chosen answer
- beta x log sigmoid(log odds(chosen) - log odds(rejected)), with length-averaged log-probabilities; beta is the
paper's lambda (0.1). Run: tunesmith rlhf --method orpo --dataset pairs.jsonl

Pairs are rendered by our Template, as in DPO. As in TRL, the NLL term covers the prompt tokens as well as the
chosen answer (TRL's ORPOTrainer masks only padding there); the odds ratio uses the answers alone.

Tokens/s: counted over both sides of each pair (see cpo.py: TRL's pair batches have no input_ids for the Trainer).
"""

from __future__ import annotations

from typing import Any

from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from tunesmith.config.rlhf import RLHFConfig
from tunesmith.train.preference import count_pair_tokens, load_preference_data, render_pairs, trl_pair_row
from tunesmith.train.preflight import load_template, preflight, trainable_report
from tunesmith.train.run import RunResult, open_run
from tunesmith.train.setup import common_args, load_trainable, run_trainer


def orpo(cfg: RLHFConfig, callbacks: list[Any] | None = None) -> RunResult:
    with open_run(cfg) as run:
        template, base_folder = load_template(cfg)
        data = load_preference_data(cfg, "preference", template, render_pairs)  # bad pairs stop the run here
        plan = preflight(cfg, base_folder, rows=len(data.train))
        model, device, dtype = load_trainable(cfg, base_folder)
        run.save_config(base_model_folder=str(base_folder), train_pairs=len(data.train), skipped_rows=data.skipped,
                        **data.record,
                        **plan.recorded(), **trainable_report(cfg, model))
        common = common_args(cfg, run.dir, device, dtype, has_eval=data.eval is not None)
        args = ORPOConfig(**common, beta=cfg.orpo.beta)
        trainer = run_trainer(cfg, run.dir, model, template.tokenizer, data.train, data.eval, device, dtype,
                              run.resume_from, callbacks, trainer_cls=RenderedORPOTrainer, args=args)
        final = run.save_final(trainer, template)
        return run.result(trainer, final, data.skipped)


class RenderedORPOTrainer(ORPOTrainer):
    """TRL's ORPOTrainer tokenizes text rows itself (and may add BOS/EOS); ours arrive rendered by Template, the
    renderer training and serving share, so a row only changes layout."""

    def tokenize_row(self, feature, model=None):
        return trl_pair_row(feature)

    def _track_num_input_tokens(self, inputs):  # its batches have no input_ids for the Trainer to count
        count_pair_tokens(self, inputs)
