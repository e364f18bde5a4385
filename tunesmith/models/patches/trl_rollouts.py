"""One turn of generation inside TRL's GRPOTrainer, for multi-turn episodes (train/episodes.py), TRL 1.16.

Upstream: GRPOTrainer generates once per batch, up to max_completion_length tokens, and offers a custom
`rollout_func` but no public call to generate one turn from given token ids. Its own multi-turn tool loop calls the
private `_generate_single_turn(prompt_ids, images, fields, num_generations)`, which returns (completion ids, logprobs
or None) and works for transformers generation and vLLM alike; we call it the same way. It reads the token limit of
each call from three places (the transformers generation config, the generation kwargs, the vLLM helper), so a turn's
own limit is set there for the call and put back afterwards. tests/models/test_patches.py checks the signature and
the three places against the installed TRL.
"""

from __future__ import annotations

import contextlib
from typing import Any


def generate_turn(trainer: Any, prompt_ids: list[list[int]], max_tokens: int) -> tuple[list, list | None]:
    """(new ids per prompt, their sampling logprobs or None) for one turn of at most `max_tokens` tokens each."""
    from tunesmith.models.patches import check_upstream

    check_upstream("trl")
    generate = getattr(trainer, "_generate_single_turn", None)
    if generate is None:
        raise RuntimeError("this TRL version has no GRPOTrainer._generate_single_turn (multi-turn episodes need "
                           "it); install the pinned trl==1.16.0")
    with turn_limit(trainer, max_tokens):
        return generate(prompt_ids, None, {}, 1)


@contextlib.contextmanager
def turn_limit(trainer: Any, tokens: int):
    """GRPOTrainer generates up to max_completion_length tokens per call; a turn gets `tokens`. TRL 1.16 reads the
    limit at each call from these three places (transformers generation config and kwargs, the vLLM helper)."""
    places = [(getattr(trainer, "generation_config", None), "max_new_tokens"),
              (getattr(trainer, "vllm_generation", None), "max_completion_length")]
    places = [(owner, name, getattr(owner, name)) for owner, name in places if hasattr(owner, name)]
    kwargs = getattr(trainer, "generation_kwargs", None)
    kwargs = kwargs if isinstance(kwargs, dict) and "max_new_tokens" in kwargs else {}
    saved_kwarg = kwargs.get("max_new_tokens")
    for owner, name, _ in places:
        setattr(owner, name, tokens)
    if kwargs:
        kwargs["max_new_tokens"] = tokens
    try:
        yield
    finally:
        for owner, name, value in places:
            setattr(owner, name, value)
        if kwargs:
            kwargs["max_new_tokens"] = saved_kwarg
