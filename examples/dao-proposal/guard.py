"""The classifier hook of the DAO drafter's output policy (guardrails.yaml): every proposal cites a data source.

    tunesmith deploy --adapters dao=runs/dao-grpo/final --guardrails dao=examples/dao-proposal/guardrails.yaml

The server calls no_data_source(answer) on each whole answer; a reason blocks it, None lets it through. The citation
rules are the GRPO reward's (rewards.py): a 0x + 64-hex transaction hash, or a link to a known block explorer's
/tx/ or /address/ page.
"""

from __future__ import annotations

from rewards import citations


def no_data_source(text: str) -> str | None:
    good, _ = citations(text)
    return None if good else "the draft cites no on-chain data (no transaction hash or explorer link)"
