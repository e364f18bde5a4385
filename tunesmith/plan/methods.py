"""What an alignment method adds to the memory of a training step (plan/estimate.py models an SFT step). Pure.

    setup = method_setup(setup, alignment)                  # the SFT-shaped step the method runs
    extra = method_extra_bytes(shape, setup, alignment)     # beside it: {"reference": ..., "kv_cache": ...}

  pairs        dpo, cpo, simpo, orpo and rm run chosen and rejected through the model together (TRL concatenates
               them): the step holds the activations of 2 x micro_batch sequences. kto adds its KL batch: also 2 x.
  reference    full-weight dpo and kto (and grpo with a KL term) keep a second, frozen copy of the weights in the
               compute dtype; with an adapter the reference is the base with the adapter switched off: no copy.
  rollouts     grpo and ppo generate before they train: a KV cache for every sequence sampled at once, up to
               max_length tokens each. Generation and the training step do not peak together; adding both errs
               on the safe side by about the smaller of the two.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tunesmith.plan.estimate import DTYPE_BYTES, Setup
from tunesmith.plan.model_shape import ModelShape

TWO_SEQUENCES = ("dpo", "cpo", "simpo", "orpo", "rm", "kto")


@dataclass(frozen=True)
class Alignment:
    method: str                  # sft | pt | dpo | kto | orpo | cpo | simpo | rm | grpo | ppo
    reference_copy: bool = False
    rollout_sequences: int = 0   # sequences generated at once (grpo: batch_size completions; ppo: batch_size)
    rollout_length: int = 0      # tokens each may reach (prompt + completion)


def method_setup(setup: Setup, alignment: Alignment) -> Setup:
    """The SFT-shaped step the method runs: pair methods put two sequences through per row."""
    if alignment.method in TWO_SEQUENCES:
        return replace(setup, micro_batch=2 * setup.micro_batch)
    return setup


def method_extra_bytes(shape: ModelShape, setup: Setup, alignment: Alignment) -> dict[str, float]:
    """Bytes alive beside the step: the reference copy and the rollouts' KV cache."""
    extra: dict[str, float] = {}
    width = DTYPE_BYTES[setup.dtype]
    if alignment.reference_copy:
        extra["reference"] = shape.params() * width
    if alignment.rollout_sequences:
        extra["kv_cache"] = (2 * shape.layers * shape.kv_heads * shape.head_dim * alignment.rollout_length
                             * alignment.rollout_sequences * width)
    return extra
