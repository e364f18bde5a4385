"""CPO and SimPO on preference pairs: no reference model. The policy's own log-likelihoods of chosen and rejected
are contrasted (loss_type sigmoid | hinge | ipo | simpo), plus cpo_alpha x the NLL of the chosen answer.
Run: tunesmith rlhf --method cpo --dataset pairs.jsonl      (CPO: sigmoid loss, cpo_alpha 1.0, beta 0.1)
     tunesmith rlhf --method simpo --dataset pairs.jsonl    (SimPO: length-normalised rewards, margin simpo_gamma)

SimPO is CPO with loss_type "simpo" and cpo_alpha 0, as TRL documents; its defaults are the SimPO paper's beta 2.0
and gamma = 0.5 x beta (config/rlhf.py). Pairs are rendered by our Template (train/preference.py), as in DPO.

Tokens/s: TRL's pair batches carry chosen_input_ids/rejected_input_ids but no input_ids, which is what the Trainer
counts; the trainer below counts both sides' tokens instead (train/preference.py count_pair_tokens).
"""

from __future__ import annotations

from typing import Any

from trl.experimental.cpo import CPOConfig, CPOTrainer

from tunesmith.config.rlhf import RLHFConfig
from tunesmith.train.preference import count_pair_tokens, load_preference_data, render_pairs, trl_pair_row
from tunesmith.train.preflight import load_template, preflight, trainable_report
from tunesmith.train.run import RunResult, open_run
from tunesmith.train.setup import common_args, load_trainable, run_trainer


def cpo(cfg: RLHFConfig, callbacks: list[Any] | None = None) -> RunResult:
    with open_run(cfg) as run:
        template, base_folder = load_template(cfg)
        data = load_preference_data(cfg, "preference", template, render_pairs)  # bad pairs stop the run here
        plan = preflight(cfg, base_folder, rows=len(data.train))
        model, device, dtype = load_trainable(cfg, base_folder)
        run.save_config(base_model_folder=str(base_folder), train_pairs=len(data.train), skipped_rows=data.skipped,
                        **data.record,
                        **plan.recorded(), **trainable_report(cfg, model))
        common = common_args(cfg, run.dir, device, dtype, has_eval=data.eval is not None)
        args = CPOConfig(**common, **trl_knobs(cfg))
        trainer = run_trainer(cfg, run.dir, model, template.tokenizer, data.train, data.eval, device, dtype,
                              run.resume_from, callbacks, trainer_cls=RenderedCPOTrainer, args=args)
        final = run.save_final(trainer, template)
        return run.result(trainer, final, data.skipped)


def trl_knobs(cfg: RLHFConfig) -> dict[str, Any]:
    """TRL's CPOConfig values from our cpo or simpo section."""
    if cfg.method == "simpo":
        return dict(beta=cfg.simpo.beta, loss_type="simpo", cpo_alpha=cfg.simpo.alpha, simpo_gamma=cfg.simpo.gamma)
    return dict(beta=cfg.cpo.beta, loss_type=cfg.cpo.loss_type, cpo_alpha=cfg.cpo.alpha,
                simpo_gamma=cfg.cpo.simpo_gamma if cfg.cpo.simpo_gamma is not None else 0.5)


class RenderedCPOTrainer(CPOTrainer):
    """TRL's CPOTrainer tokenizes text rows itself (and may add BOS/EOS); ours arrive rendered by Template, the
    renderer training and serving share, so a row only changes layout."""

    def tokenize_row(self, feature, model=None):
        return trl_pair_row(feature)

    def _track_num_input_tokens(self, inputs):  # its batches have no input_ids for the Trainer to count
        count_pair_tokens(self, inputs)
