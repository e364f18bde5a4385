"""Does the data teach the model to stop? Checked on the rendered labels before any weights load.

    require_end_of_turn(train_ds["labels"], template, cfg.dataset)   # sft; rlhf checks its answers' ids

A tuned model stops generating when it emits one of the template's stop tokens (Template.stop_token_ids: the
end-of-turn token(s) and EOS). If no trained token of the whole dataset is one of them, the model never learns to
stop and answers run to max_tokens once served ("it trained but never stops generating", the peers' trackers). That
happens when the end of turn is masked (every answer cut off by --truncation right), or when the chat template ends
answers with text that is no stop token (an added token not marked special, a plain-text marker).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tunesmith.errors import DataError
from tunesmith.templates import IGNORE


def trains_stop(labels: Iterable[int], stop_ids: set[int]) -> bool:
    """Whether a sample's trained tokens (labels other than -100) include a stop token."""
    return any(label != IGNORE and label in stop_ids for label in labels)


def stop_positions(labels: list[int], stop_ids: set[int]) -> list[int]:
    """Indices of the trained stop tokens of one sample (where an answer ends)."""
    return [i for i, label in enumerate(labels) if label != IGNORE and label in stop_ids]


def require_end_of_turn(samples: Iterable[list[int]], template: Any, dataset: list[str], what: str = "answers") -> int:
    """Refuse data in which no sample trains a stop token. `samples`: each sample's trained ids (labels, or an
    answer's ids that are all trained). Returns how many samples do train one."""
    stop_ids = set(template.stop_token_ids)
    total = count = 0
    for labels in samples:
        total += 1
        count += trains_stop(labels, stop_ids)
    if count or not total:  # no samples at all: preflight says "no rows left to train on"
        return count
    tok = template.tokenizer
    names = ", ".join(repr(tok.convert_ids_to_tokens(i)) for i in sorted(stop_ids)) or "none"
    end_ids = tok(template.end_of_turn, add_special_tokens=False)["input_ids"] if template.end_of_turn else []
    if not stop_ids & set(end_ids):
        why = (f"the chat template ends an answer with {template.end_of_turn!r}, which holds no token that stops "
               f"generation (stop tokens: {names}); use a template whose turns end with a special token such as EOS, "
               "or mark that token special in the tokenizer")
    else:
        why = (f"the end-of-turn token ({names}) is masked in every {what[:-1]} (cut off by --truncation right, or "
               "outside the loss); use --truncation left or drop, or raise max_length")
    raise DataError(f"{', '.join(dataset)}: no {what[:-1]} trains an end-of-turn token, so a tuned model would never "
                    f"learn to stop: {why}. `tunesmith data inspect` shows each token's loss weight.")
