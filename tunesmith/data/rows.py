"""The row types every later stage sees, and the problem report that names file, line and field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    source: str
    line: int | str
    field: str
    problem: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.field}: {self.problem}"


@dataclass
class RawRow:
    """One record as read from a file, with where it came from."""

    source: str
    line: int | str  # 1-based line for JSONL/CSV, row index for JSON/Parquet/hub datasets
    data: Any


@dataclass
class Conversation:
    """Chat messages ({role, content, [loss], [tool_calls]}), normalised from any supported format."""

    messages: list[dict[str, Any]]
    source: str = ""
    line: int | str = 0
    format: str = "messages"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Text:
    """Raw text for continued pretraining."""

    text: str
    source: str = ""
    line: int | str = 0
    format: str = "text"


@dataclass
class Preference:
    """A prompt (messages ending with the user's turn) with a better and a worse assistant answer."""

    prompt: list[dict[str, Any]]
    chosen: str
    rejected: str
    source: str = ""
    line: int | str = 0
    format: str = "preference"


@dataclass
class UnpairedPreference:
    """A prompt with one assistant answer marked desirable (label true) or undesirable (false), for KTO."""

    prompt: list[dict[str, Any]]
    completion: str
    label: bool
    source: str = ""
    line: int | str = 0
    format: str = "kto"


def content_hash(item: Conversation | Text | Preference | UnpairedPreference) -> str:
    """A row's identity by content, whatever file or format it came from (an Alpaca row and the same conversation
    as OpenAI messages hash alike): incremental retraining (--continue-from) skips rows an earlier run trained on."""
    import hashlib
    import json

    if isinstance(item, Conversation):
        content: Any = ["conversation", item.messages, item.extra.get("tools")]
    elif isinstance(item, Text):
        content = ["text", item.text]
    elif isinstance(item, Preference):
        content = ["preference", item.prompt, item.chosen, item.rejected]
    else:
        content = ["kto", item.prompt, item.completion, item.label]
    text = json.dumps(content, ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]
