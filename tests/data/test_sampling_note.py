"""`name#N` with N above the dataset's row count draws N rows, repeating the set (README: "`name#N` samples N rows
with the seed"). Before: the repeats were silent (outside user: a #5000 meant as "at most 5000" trained on copies);
now one note says so. N at or below the row count draws distinct rows, without a note."""

import json
import logging
from collections import Counter

import pytest

from tunesmith.data.load import load_rows, read_raw
from tunesmith.data.registry import REGISTRY


@pytest.fixture
def twelve(tmp_path):
    path = tmp_path / "twelve.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(12)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def notes(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "tunesmith" and "drawn" in r.getMessage()]


def test_more_than_the_file_holds_repeats_rows_and_says_so(twelve, caplog):
    caplog.set_level(logging.INFO, logger="tunesmith")
    data = load_rows([f"{twelve}#30"], kind="sft", seed=42)
    assert len(data.rows) == 30
    assert sorted(Counter(r.line for r in data.rows).values()) == [2] * 6 + [3] * 6  # 2 whole sets + 6 drawn
    assert notes(caplog) == [f"{twelve}#30: the file has 12 rows; 30 drawn (rows repeated)"]


def test_at_most_the_row_count_draws_distinct_rows_quietly(twelve, caplog):
    caplog.set_level(logging.INFO, logger="tunesmith")
    for n in (5, 12):
        data = load_rows([f"{twelve}#{n}"], kind="sft", seed=42)
        assert len({r.line for r in data.rows}) == len(data.rows) == n
    assert notes(caplog) == []


def test_a_registry_name_and_raw_reads_say_so_too(caplog):
    caplog.set_level(logging.INFO, logger="tunesmith")
    size = len(read_raw(["prd-assistant"]))
    assert REGISTRY["prd-assistant"].path is not None
    rows = read_raw([f"prd-assistant#{size + 5}"])
    assert len(rows) == size + 5
    assert notes(caplog) == [f"prd-assistant#{size + 5}: the dataset has {size} rows; {size + 5} drawn (rows repeated)"]
