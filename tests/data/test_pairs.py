"""Encoder-task rows (data/pairs.py): formats detected from the columns, bad rows as file:line: field: problem."""

import json

import pytest

from tunesmith.data.load import load_rows
from tunesmith.data.pairs import Judged, Labelled, Triplet
from tunesmith.errors import DataError


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return str(path)


def test_triplets_in_every_spelling(tmp_path):
    rows = [{"query": "q1", "positive": "p1"},
            {"anchor": "q2", "positive": "p2", "negative": "n2"},
            {"question": "q3", "pos": "p3", "negatives": ["n3a", "n3b"]},
            {"query": "q4", "positive": "p4", "negative_2": "second", "negative_1": "first"}]
    data = load_rows([write_jsonl(tmp_path / "e.jsonl", rows)], kind="embedding")
    assert not data.problems
    assert [(r.query, r.positive, r.negatives) for r in data.rows] == [
        ("q1", "p1", []), ("q2", "p2", ["n2"]), ("q3", "p3", ["n3a", "n3b"]), ("q4", "p4", ["first", "second"])]
    assert all(isinstance(r, Triplet) for r in data.rows) and data.formats == {"query-positive": 4}


def test_reranker_rows_judged_or_triplets_and_labels_as_csv_spells_them(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("query,document,label\nq,d1,1\nq,d2,0\nq,d3,true\nq,d4,2.5\n", encoding="utf-8")
    data = load_rows([str(path), write_jsonl(tmp_path / "t.jsonl", [{"query": "q", "positive": "p"}])],
                     kind="reranker")
    assert not data.problems
    judged = [r for r in data.rows if isinstance(r, Judged)]
    assert [(r.document, r.label) for r in judged] == [("d1", 1.0), ("d2", 0.0), ("d3", 1.0), ("d4", 2.5)]
    assert data.formats == {"query-document": 4, "query-positive": 1}


def test_classification_rows(tmp_path):
    rows = [{"text": "a", "label": "pos"}, {"text": "b", "label": 0}, {"text": "c", "label": True},
            {"text": "d", "text_pair": "e", "label": 1.0}]
    data = load_rows([write_jsonl(tmp_path / "c.jsonl", rows)], kind="classification")
    assert not data.problems
    assert [(r.text, r.text_pair, r.label) for r in data.rows] == [
        ("a", None, "pos"), ("b", None, "0"), ("c", None, "true"), ("d", "e", "1")]
    assert all(isinstance(r, Labelled) for r in data.rows)


@pytest.mark.parametrize("kind,row,where", [
    ("embedding", {"query": "q", "positive": ""}, "positive: empty text"),
    ("embedding", {"query": "q", "positive": "p", "negatives": ["n", 3]}, "negatives[1]: expected a string, got int"),
    ("embedding", {"query": "q", "positive": "p", "negative": "p"}, "negative: identical to the positive"),
    ("embedding", {"query": "q", "document": "d", "label": 1}, "columns: not a embedding row (document, label, query)"
                                                               "; expected query/positive"),
    ("reranker", {"query": "q", "document": "d", "label": -1}, "label: expected a relevance >= 0"),
    ("reranker", {"query": "q", "document": "d", "score": "high"}, "score: expected a relevance >= 0"),
    ("classification", {"text": "t", "label": None}, "label: expected a class name or an integer, got None"),
    ("classification", {"query": "q", "positive": "p"}, "columns: not a classification row"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, kind, row, where):
    path = write_jsonl(tmp_path / "bad.jsonl", [row])
    data = load_rows([path], kind=kind)
    assert [str(p) for p in data.problems][0].startswith(f"{path}:1: {where}")
    with pytest.raises(DataError, match=r"bad\.jsonl:1:"):
        data.raise_if_bad(skip_bad_rows=False)
