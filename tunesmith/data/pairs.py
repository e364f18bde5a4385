"""Rows of the encoder tasks, detected from their columns, every problem as `file:line: field: problem`.

    data = load_rows(["pairs.jsonl"], kind="embedding")     # data/load.py hands each row to normalise() below

Formats (the column spellings of sentence-transformers' hub datasets and of MS MARCO / BEIR exports):
- `query`/`positive`/`negative(s)` (also `anchor` or `question` for the query; `negative` a string, `negatives` a
  list, or `negative_1`, `negative_2`, ...): a query with a relevant text and optional hard negatives -> Triplet.
  Embedding and reranker rows.
- `query`/`document`/`label` or `score` (also `passage` or `doc`): one judged pair -> Judged. Reranker rows; the label
  is a relevance grade >= 0 (true/false, 0/1, or graded for the listwise losses).
- `text`/`label` (+ `text_pair`): one labelled text -> Labelled. Classification rows; labels are names or integers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tunesmith.data.formats import _Reporter
from tunesmith.data.rows import Problem, RawRow

KINDS = ("embedding", "reranker", "classification")
QUERY_KEYS = ("query", "anchor", "question")
POSITIVE_KEYS = ("positive", "pos")
DOCUMENT_KEYS = ("document", "passage", "doc")
LABEL_KEYS = ("label", "score")
NEGATIVE = re.compile(r"^neg(ative)?(s|_\d+)?$")
TRUTH = {"true": 1.0, "false": 0.0}


@dataclass
class Triplet:
    """A query, a text relevant to it, and texts that look relevant but are not (hard negatives, may be empty)."""

    query: str
    positive: str
    negatives: list[str] = field(default_factory=list)
    source: str = ""
    line: int | str = 0
    format: str = "query-positive"

    @property
    def texts(self) -> list[str]:
        return [self.query, self.positive, *self.negatives]


@dataclass
class Judged:
    """A query and a document with a relevance label (0 = not relevant; higher = more)."""

    query: str
    document: str
    label: float
    source: str = ""
    line: int | str = 0
    format: str = "query-document"

    @property
    def texts(self) -> list[str]:
        return [self.query, self.document]


@dataclass
class Labelled:
    """A text (or a text pair) and its class name."""

    text: str
    label: str
    text_pair: str | None = None
    source: str = ""
    line: int | str = 0
    format: str = "text-label"

    @property
    def texts(self) -> list[str]:
        return [self.text] + ([self.text_pair] if self.text_pair is not None else [])


def detect(data: dict[str, Any]) -> str | None:
    keys = set(data)
    query = any(k in keys for k in QUERY_KEYS)
    if query and any(k in keys for k in POSITIVE_KEYS):
        return "query-positive"
    if query and any(k in keys for k in DOCUMENT_KEYS) and any(k in keys for k in LABEL_KEYS):
        return "query-document"
    if "text" in keys and "label" in keys:
        return "text-label"
    return None


ACCEPTED = {"embedding": ("query-positive",), "reranker": ("query-positive", "query-document"),
            "classification": ("text-label",)}
EXPECTED = {"embedding": "query/positive (+ negative or negatives), or anchor/positive/negative",
            "reranker": "query/document/label (or score), or query/positive/negatives",
            "classification": "text/label"}


def normalise(row: RawRow, kind: str, problems: list[Problem]) -> Triplet | Judged | Labelled | None:
    """One row of `kind` (embedding, reranker, classification), or None with its problem appended."""
    bad = _Reporter(row, problems)
    data = row.data
    if not isinstance(data, dict):
        return bad("row", f"expected a JSON object, got {type(data).__name__}")
    fmt = detect(data)
    if fmt not in ACCEPTED[kind]:
        cols = ", ".join(sorted(data)) or "none"
        hint = {"query-document": "; query/document/label rows train a reranker (--task reranker)",
                "query-positive": "; a classifier learns from text/label rows",
                "text-label": "; text/label rows train a classifier (--task classification)"}.get(fmt or "", "")
        return bad("columns", f"not a {kind} row ({cols}); expected {EXPECTED[kind]}{hint}")
    if fmt == "query-positive":
        return _triplet(data, row, bad)
    if fmt == "query-document":
        return _judged(data, row, bad)
    return _labelled(data, row, bad)


def _text(data: dict, key: str, bad: _Reporter) -> str | None:
    value = data[key]
    if not isinstance(value, str):
        return bad(key, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        return bad(key, "empty text")
    return value


def _triplet(data: dict, row: RawRow, bad: _Reporter) -> Triplet | None:
    q_key = next(k for k in QUERY_KEYS if k in data)
    p_key = next(k for k in POSITIVE_KEYS if k in data)
    query, positive = _text(data, q_key, bad), _text(data, p_key, bad)
    if query is None or positive is None:
        return None
    negatives: list[str] = []
    for key in sorted((k for k in data if NEGATIVE.match(k)), key=_negative_order):
        value = data[key]
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            where = f"{key}[{i}]" if isinstance(value, list) else key
            if not isinstance(item, str):
                return bad(where, f"expected a string, got {type(item).__name__}")
            if not item.strip():
                return bad(where, "empty text")
            if item == positive:
                return bad(where, "identical to the positive: a text cannot be both relevant and not")
            negatives.append(item)
    return Triplet(query, positive, negatives, row.source, row.line)


def _negative_order(key: str) -> tuple[int, str]:
    digits = key.rpartition("_")[2]
    return (int(digits) if digits.isdigit() else 0, key)


def _judged(data: dict, row: RawRow, bad: _Reporter) -> Judged | None:
    q_key = next(k for k in QUERY_KEYS if k in data)
    d_key = next(k for k in DOCUMENT_KEYS if k in data)
    l_key = next(k for k in LABEL_KEYS if k in data)
    query, document = _text(data, q_key, bad), _text(data, d_key, bad)
    if query is None or document is None:
        return None
    label = relevance(data[l_key])
    if label is None:
        return bad(l_key, f"expected a relevance >= 0 (true/false, 0/1 or a grade), got {data[l_key]!r}")
    return Judged(query, document, label, row.source, row.line)


def relevance(value: Any) -> float | None:
    """true/false, numbers >= 0, and their spellings in CSV files ("1", "0.5", "true")."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in TRUTH:
            return TRUTH[text]
        try:
            value = float(text)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and value >= 0 and value == value:  # not NaN
        return float(value)
    return None


def _labelled(data: dict, row: RawRow, bad: _Reporter) -> Labelled | None:
    text = _text(data, "text", bad)
    if text is None:
        return None
    pair = None
    if data.get("text_pair") is not None:
        pair = _text(data, "text_pair", bad)
        if pair is None:
            return None
    label = data["label"]
    if isinstance(label, bool):
        label = str(label).lower()
    elif isinstance(label, int) or (isinstance(label, float) and label.is_integer()):
        label = str(int(label))
    elif not isinstance(label, str) or not label.strip():
        return bad("label", f"expected a class name or an integer, got {label!r}")
    return Labelled(text, label.strip(), pair, row.source, row.line)
