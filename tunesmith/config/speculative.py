"""`--speculative` (YAML `speculative:`): speculative decoding, parsed once for every backend that serves it.

    draft=MODEL   a small draft model (a folder, a run's final/ or a registry name) with the served model's tokenizer
                  proposes tokens; the served model checks them all in one forward pass
    ngram[:N]     prompt lookup: the N tokens (default 10) that followed the last matching n-gram of the prompt and
                  answer so far are proposed; no second model

The served model verifies every proposal, so greedy answers are the ones without speculation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NGRAM_TOKENS = 10  # transformers' PromptLookupCandidateGenerator default
SPECULATIVE_HELP = (
    "Speculative decoding: draft=MODEL (a small model with the same tokenizer proposes tokens, the served model checks "
    "them in one pass) or ngram[:N] (prompt lookup: N tokens copied from the prompt per step, default 10). Greedy "
    "answers are unchanged. transformers backend: ngram runs inside the continuous batch (greedy requests verify "
    "their proposals in the batch's forward pass; sampling requests take one token per step beside them); draft "
    "answers text requests one at a time through generate() with transformers' assisted generation instead of the "
    "continuous batch (on a GPU slower than the continuous batch, measured 6x at one stream: docs/benchmarks.md); "
    "logprobs, seeds, response_format and vision requests keep their own paths. vllm backend: vLLM's "
    "speculative_config, inside its continuous batch (a draft is a whole model, not a LoRA run).")


@dataclass(frozen=True)
class Speculation:
    method: Literal["draft", "ngram"]
    model: str | None = None  # draft: the draft model
    tokens: int = NGRAM_TOKENS  # ngram: tokens proposed per step

    def __str__(self) -> str:
        return f"draft={self.model}" if self.method == "draft" else f"ngram:{self.tokens}"


def parse_speculative(value: str) -> Speculation:
    """'draft=MODEL', 'ngram' or 'ngram:N'; ValueError saying which forms exist (the config names the field)."""
    text = str(value).strip()
    if text.startswith("draft="):
        model = text[len("draft="):].strip()
        if not model:
            raise ValueError("draft= needs a model, e.g. draft=runs/small/final")
        return Speculation("draft", model=model)
    if text == "ngram":
        return Speculation("ngram")
    if text.startswith("ngram:"):
        count = text[len("ngram:"):].strip()
        if not count.isdigit() or int(count) < 1:
            raise ValueError("the N of ngram:N is a whole number of tokens >= 1")
        return Speculation("ngram", tokens=int(count))
    raise ValueError("draft=MODEL, ngram or ngram:N")


def check_speculative(value: str | None) -> str | None:
    """The field validator: the value normalised (ngram -> ngram:10), or ValueError."""
    return None if value in (None, "") else str(parse_speculative(value))
