"""The built-in rewards. Each `make_*` takes the run's config and returns a reward function.

  format      1.0 when the whole answer (stripped) matches --rewards.format-pattern (re.fullmatch, DOTALL), or with
              --rewards.format json when it parses as JSON; else 0.0.
  length      in tokens. With --rewards.length-target T: -|n - T| / T, floored at -1 (0 at the target). Without it, DAPO's
              soft overlong punishment (arXiv 2503.14476, eq. 13, TRL's implementation): 0 up to 80% of
              max_completion_length, then linearly down to -1 at the limit, so only answers about to be cut lose.
  repetition  -(share of repeated token n-grams), in [-1, 0] (n = --repetition-ngram, 3 by default; TRL's
              implementation of arXiv 2502.03373, appendix C.2).
  accuracy    1.0 when the answer matches the `solution` column: numerically (the answer's last number, 1e-6
              relative tolerance) when the solution is a number, else exactly after trimming and case-folding.
              Both sides are first cut to their final answer: the last \\boxed{...}, the text after "####", or after
              the last "answer is" / "answer:". Rows without a solution get None (left out of that reward).
TRL is imported only when a reward that reuses its code is built, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable

from tunesmith.errors import ConfigError

OVERLONG_SHARE = 0.2  # DAPO: L_cache = 4096 of L_max = 20480 tokens


def make_format(cfg: Any) -> Callable:
    if cfg.rewards.format == "json":
        def format_json(completions: list[str], **_: Any) -> list[float]:
            return [1.0 if _is_json(c) else 0.0 for c in completions]

        return format_json
    if cfg.rewards.format_pattern is None:
        raise ConfigError("rewards.funcs: the format reward needs --rewards.format-pattern REGEX (the whole answer must match) "
                          "or --rewards.format json")
    pattern = re.compile(cfg.rewards.format_pattern, re.DOTALL)

    def format_regex(completions: list[str], **_: Any) -> list[float]:
        return [1.0 if pattern.fullmatch(c.strip()) else 0.0 for c in completions]

    return format_regex


def make_length(cfg: Any) -> Callable:
    target = cfg.rewards.length_target
    if target is not None:
        def length_target(completions: list[str], completion_ids: list[list[int]], **_: Any) -> list[float]:
            return [max(-1.0, -abs(len(ids) - target) / target) for ids in completion_ids]

        return length_target
    from trl.rewards import get_soft_overlong_punishment

    limit = cfg.rollout.max_completion_length
    punish = get_soft_overlong_punishment(limit, max(1, round(limit * OVERLONG_SHARE)))

    def length_overlong(completions: list[str], completion_ids: list[list[int]], **_: Any) -> list[float]:
        return punish(completion_ids)

    return length_overlong


def make_repetition(cfg: Any) -> Callable:
    from trl.rewards import get_repetition_penalty_reward

    penalty = get_repetition_penalty_reward(ngram_size=cfg.rewards.repetition_ngram, max_penalty=-1.0)

    def repetition(completions: list[str], completion_ids: list[list[int]], **_: Any) -> list[float]:
        return penalty(completion_ids)

    return repetition


def make_accuracy(cfg: Any) -> Callable:
    def accuracy(completions: list[str], solution: list, **_: Any) -> list[float | None]:
        return [None if s is None else float(answers_match(c, str(s))) for c, s in zip(completions, solution)]

    return accuracy


# -----------------------------------------------------------------------------
# Helpers

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?|-?\.\d+")
ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*", re.IGNORECASE)


def final_answer(text: str) -> str:
    """The part of a worked answer that states the result."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    if "####" in text:
        return text.rsplit("####", 1)[1]
    cues = list(ANSWER_IS.finditer(text))
    return text[cues[-1].end():] if cues else text


def answers_match(completion: str, solution: str) -> bool:
    want, got = final_answer(solution).strip(), final_answer(completion)
    number = _number(want) if NUMBER.fullmatch(want.strip("$ .")) else None
    if number is not None:
        found = [v for v in map(_number, NUMBER.findall(got)) if v is not None]
        return bool(found) and math.isclose(found[-1], number, rel_tol=1e-6, abs_tol=1e-9)
    return _norm(got) == _norm(want)


def _number(text: str) -> float | None:
    text = text.strip("$ .").replace(",", "")
    try:
        if "/" in text:
            top, bottom = (float(x) for x in text.split("/"))
            return top / bottom if bottom else None
        return float(text)
    except ValueError:
        return None


def _norm(text: str) -> str:
    return " ".join(text.strip().strip("$.\"'`").strip().casefold().split())


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def _is_json(text: str) -> bool:
    try:
        json.loads(text.strip())
        return True
    except ValueError:
        return False
