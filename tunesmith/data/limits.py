"""How many characters can fit in max_length tokens, so load_rows refuses an oversized row before tokenizing it.

    limit = max_chars(template.tokenizer, cfg.max_length)       # None when no safe bound exists for this tokenizer
    data = load_rows(cfg.dataset, kind="sft", max_chars=limit)

Why the bound is safe. n tokens spell at most n x L characters, L being the longest token's spelling in the
vocabulary (added tokens included; a byte-level spelling has one character per byte, a character at least one
byte). A template renders each message whole (some trim it, or drop reasoning before `</think>` from past turns:
we leave both out of the count), so a message whose text has more than max_length x L characters cannot fit.
No fixed characters-per-token bound is safe: Qwen2.5 has a token of 128 spaces and one of 113 characters of
`//----`. Whitespace is not counted at all, because special tokens with lstrip/rstrip and some normalizers swallow
any run of it. What remains can only shrink in the tokenizer's normalizer, by a factor we read from it (NFC and
NFKC compose at most 4 code points into one, Unicode's longest canonical decomposition); a step that can delete
any text (BERT's accent stripping, a Regex replace, an unknown-token that swallows a whole word or run) means no
bound, and then rows are only judged after tokenizing, as before.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Iterator

from tunesmith.data.rows import Conversation, Preference, Text, UnpairedPreference
from tunesmith.data.vision import text_of

WHITESPACE = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())  # str.isspace: 29 characters
SAFE_PRE_TOKENIZERS = {"ByteLevel", "Metaspace", "Split", "Digits", "Punctuation", "UnicodeScripts", "Whitespace",
                       "WhitespaceSplit", "BertPreTokenizer"}  # they split text, or drop whitespace only


def max_chars(tokenizer: Any, max_length: int) -> int | None:
    """Non-whitespace characters beyond which a message cannot fit in max_length tokens, or None (no safe bound)."""
    shrink = _shrink_factor(tokenizer)
    if shrink is None:
        return None
    longest = max(len(token) for token in tokenizer.get_vocab())
    return max_length * longest * shrink


def texts(item: Conversation | Text | Preference | UnpairedPreference) -> Iterator[tuple[str, str]]:
    """(field, text) for each text a template renders whole, as far as load_rows can count it (see above)."""
    if isinstance(item, Text):
        yield "text", item.text
        return
    messages = item.messages if isinstance(item, Conversation) else item.prompt
    for i, m in enumerate(messages):
        name = f"messages[{i}].content" if item.format == "messages" else f"{m['role']} turn"
        yield name, _rendered_part(text_of(m["content"]), m["role"])
    answers = {Preference: lambda: [("chosen", item.chosen), ("rejected", item.rejected)],
               UnpairedPreference: lambda: [("completion", item.completion)]}.get(type(item), list)()
    for name, text in answers:
        yield name, _rendered_part(text, "assistant")


def visible_chars(text: str) -> int:
    """Characters other than whitespace (counted without copying the text: it may be 50 MB)."""
    return len(text) - sum(map(text.count, WHITESPACE))


def _rendered_part(text: str, role: str) -> str:
    return text.rpartition("</think>")[2] if role == "assistant" else text


def _shrink_factor(tokenizer: Any) -> int | None:
    """How many non-whitespace characters the normalizer may turn into one; None when unbounded or unknown."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow (Python) tokenizer: its steps cannot be read
        return None
    model = backend.model
    kind = type(model).__name__
    if kind in ("WordPiece", "WordLevel"):  # an unknown word of any length becomes one [UNK]
        return None
    if getattr(model, "unk_token", None) and not getattr(model, "byte_fallback", False) and (
            kind == "Unigram" or getattr(model, "fuse_unk", False)):  # a run of unknown characters becomes one token
        return None
    pre = backend.pre_tokenizer
    if pre is not None and not _safe_pre_tokenizer(json.loads(pre.__getstate__())):
        return None
    norm = backend.normalizer
    return 1 if norm is None else _normalizer_factor(json.loads(norm.__getstate__()))


def _safe_pre_tokenizer(spec: dict) -> bool:
    if spec["type"] == "Sequence":
        return all(_safe_pre_tokenizer(p) for p in spec["pretokenizers"])
    return spec["type"] in SAFE_PRE_TOKENIZERS and spec.get("behavior") != "Removed"


def _normalizer_factor(spec: dict) -> int | None:
    kind = spec["type"]
    if kind == "Sequence":
        factor = 1
        for part in spec["normalizers"]:
            f = _normalizer_factor(part)
            if f is None:
                return None
            factor *= f
        return factor
    if kind in ("NFC", "NFKC"):
        return 4
    if kind in ("NFD", "NFKD", "Lowercase", "Prepend", "Strip", "ByteLevel"):  # never drop a visible character
        return 1
    if kind == "Replace" and "String" in spec["pattern"]:
        lost, kept = visible_chars(spec["pattern"]["String"]), visible_chars(spec["content"])
        if lost == 0:
            return 1
        return -(-lost // kept) if kept else None
    return None  # BertNormalizer, Precompiled, StripAccents, a Regex replace, anything new: no bound
