"""CPO and SimPO on preference pairs: no reference model. The policy's own log-likelihoods of chosen and rejected
are contrasted (loss_type sigmoid | hinge | ipo | simpo), plus cpo_alpha x the NLL of the chosen answer.
Run: tunesmith rlhf --method cpo --dataset pairs.jsonl      (CPO: sigmoid loss, cpo_alpha 1.0, beta 0.1)
     tunesmith rlhf --method simpo --dataset pairs.jsonl    (SimPO: length-normalised rewards, margin simpo_gamma)

SimPO is CPO with loss_type "simpo" and cpo_alpha 0, as TRL documents; its defaults are the SimPO paper's beta 2.0
and gamma = 0.5 x beta (config/rlhf.py). Pairs are rendered by our Template, as in DPO.

Not reported: tokens/s. TRL's pair batches carry chosen_input_ids/rejected_input_ids but no input_ids, which is what
the Trainer counts, so token counting is off rather than warning at every step.
"""

from __future__ import annotations

from typing import Any

from trl.experimental.cpo import CPOConfig, CPOTrainer

from tunesmith.config.rlhf import RLHFConfig
from tunesmith.train.run import RunResult
from tunesmith.train.dpo import tokenize_pairs
from tunesmith.train.preference import train_pairs, trl_pair_row
from tunesmith.train.setup import common_args


def cpo(cfg: RLHFConfig, callbacks: list[Any] | None = None) -> RunResult:
    return train_pairs(cfg, callbacks, tokenize_pairs, RenderedCPOTrainer, cpo_args)


def cpo_args(cfg: RLHFConfig, run_dir: Any, device: str, dtype: Any, has_eval: bool) -> Any:
    # no token counting: TRL's pair batches have no input_ids (see the module docstring)
    return CPOConfig(**common_args(cfg, run_dir, device, dtype, has_eval) | {"include_num_input_tokens_seen": "no"},
                     **_cpo_knobs(cfg))


def _cpo_knobs(cfg: RLHFConfig) -> dict[str, Any]:
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
