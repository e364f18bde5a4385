"""Reward functions for GRPO: plain `def f(completions: list[str], **columns) -> list[float]`, registered by name.

    # my_rewards.py, loaded with: tunesmith rlhf --method grpo --rewards.plugin my_rewards.py --rewards.funcs short
    from tunesmith import register_reward

    @register_reward("short")
    def short(completions, **columns):
        return [1.0 if len(c) < 200 else 0.0 for c in completions]

`completions` are the assistant answers as text; `columns` are the dataset's other columns (e.g. `solution`), one
value per completion, plus `prompts` (each the conversation answered) and `completion_ids`. A function that names
only some of them gets only those. Return one float per completion, or None where the reward does not apply.
Built-ins: format, length, repetition, accuracy (see builtin.py). Importing this package loads no torch or TRL.
"""

from tunesmith.train.rewards.registry import BUILTINS, RewardFn, build_rewards, known_rewards, load_plugins, register_reward

__all__ = ["BUILTINS", "RewardFn", "build_rewards", "known_rewards", "load_plugins", "register_reward"]
