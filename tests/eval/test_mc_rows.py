"""Multiple-choice rows that cannot be scored fairly stop as `file:line: field: problem`. Before (outside user): an
answer index past the choices read "answer: expected a string, got int" (the row reader's words for any non-text
answer), and two choices with the same text were taken silently, so a model naming the other one scored wrong."""

import json

import pytest

from tunesmith.errors import DataError
from tunesmith.eval.samples import load_samples

ASK = [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}]


def problems(tmp_path, rows):
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError) as err:
        load_samples([str(path)])
    lines = str(err.value).splitlines()
    return [line.strip().removeprefix(f"{path}:") for line in lines if line.strip().startswith(str(path))]


def test_an_answer_index_out_of_range_says_the_range(tmp_path):
    assert problems(tmp_path, [
        {"question": "2 + 2 =", "choices": ["3", "4", "5"], "answer": 1},  # fine: MMLU's shape
        {"question": "2 + 2 =", "choices": ["3", "4", "5"], "answer": 3},
        {"question": "2 + 2 =", "choices": ["3", "4", "5"], "answer": -1},
        {"messages": ASK, "choices": ["3", "4", "5"], "answer": 7},
    ]) == ["2: answer: 3 is not the 0-based index of a choice: 3 choices, so 0 to 2 (or a letter A-C)",
           "3: answer: -1 is not the 0-based index of a choice: 3 choices, so 0 to 2 (or a letter A-C)",
           "4: answer: 7 is not the 0-based index of a choice: 3 choices, so 0 to 2 (or a letter A-C)"]


def test_choices_a_model_cannot_tell_apart_are_refused(tmp_path):
    assert problems(tmp_path, [
        {"question": "2 + 2 =", "choices": ["4", "4", "5"], "answer": "B"},
        {"question": "2 + 2 =", "choices": ["3", "Four", "four."], "answer": "B"},
        {"messages": ASK, "choices": ["3", "4", "4"], "answer": 1},
        {"question": "2 + 2 =", "choices": ["3", "4", "5"], "answer": "B"},  # fine
    ]) == ["1: choices: A and B are the same text ('4'), so a model choosing either may be scored wrong; make the "
           "choices distinct",
           "2: choices: B and C are the same text ('Four'), so a model choosing either may be scored wrong; make the "
           "choices distinct",
           "3: choices: B and C are the same text ('4'), so a model choosing either may be scored wrong; make the "
           "choices distinct"]


def test_skipping_leaves_only_the_fair_rows(tmp_path):
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"question": "q", "choices": ["x", "y"], "answer": 2},
        {"question": "q", "choices": ["x", "x"], "answer": 0},
        {"question": "q", "choices": ["x", "y"], "answer": 1},
    ]) + "\n")
    samples, skipped = load_samples([str(path)], skip_bad_rows=True)
    assert skipped == 2 and [(s.line, s.answer_index) for s in samples] == [(3, 1)]
