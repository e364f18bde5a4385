"""Rows -> prompts and references: generation rows in every training format, multiple-choice rows, bad rows."""

import json

import pytest

from tunesmith.errors import DataError
from tunesmith.eval.samples import CHOICE_INSTRUCTION, answer_index, load_samples, pick_choice


def write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return path


def test_the_last_assistant_turn_is_the_reference_and_never_part_of_the_prompt(tmp_path):
    data = write(tmp_path / "d.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"}]},
        {"instruction": "Translate", "input": "chat", "output": "cat"},
        {"prompt": "capital of France?", "response": "Paris"},
    ])
    samples, skipped = load_samples([str(data)])
    assert skipped == 0 and [s.reference for s in samples] == ["4", "cat", "Paris"]
    assert samples[0].messages[-1] == {"role": "user", "content": "2+2?"} and len(samples[0].messages) == 4
    assert samples[1].messages == [{"role": "user", "content": "Translate\n\nchat"}]
    assert samples[2].where == f"{data}:3" and not samples[2].is_choice


def test_limit_takes_the_first_or_the_last_rows(tmp_path):
    data = write(tmp_path / "d.jsonl", [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(5)])
    assert [s.reference for s in load_samples([str(data)], limit=2)[0]] == ["a0", "a1"]
    assert [s.reference for s in load_samples([str(data)], limit=-2)[0]] == ["a3", "a4"]


def test_multiple_choice_rows_get_lettered_choices_and_their_right_answer(tmp_path):
    data = write(tmp_path / "mc.jsonl", [
        {"question": "2 + 2 =", "choices": ["3", "4", "5"], "answer": "B"},
        {"question": "Sky colour?", "choices": ["green", "blue"], "answer": "blue"},
        {"messages": [{"role": "user", "content": "Largest?"}, {"role": "assistant", "content": "C"}],
         "choices": ["1", "2", "3"], "answer": 2},
        {"question": "Which is prime?", "subject": "math", "choices": ["4", "6", "7", "8"], "answer": 2},  # cais/mmlu
    ])
    samples, _ = load_samples([str(data)])
    assert [s.answer_index for s in samples] == [1, 1, 2, 2] and all(s.is_choice for s in samples)
    assert samples[0].messages == [{"role": "user", "content": f"2 + 2 =\n\nA. 3\nB. 4\nC. 5\n\n{CHOICE_INSTRUCTION}"}]
    assert [s.reference for s in samples] == ["4", "blue", "3", "7"]


def test_bad_rows_are_reported_as_file_line_field(tmp_path):
    data = write(tmp_path / "bad.jsonl", [
        {"prompt": "ok", "response": "fine"},
        '{"prompt": "broken"',
        {"question": "q", "choices": ["x", "y"], "answer": "D"},
        {"messages": [{"role": "user", "content": "no answer"}]},
        {"question": "q", "choices": ["x", "y"], "answer": 2},  # an index past the choices
    ])
    with pytest.raises(DataError) as err:
        load_samples([str(data)])
    text = str(err.value)
    assert f"{data}:2: json: not valid JSON" in text
    assert f"{data}:3: answer: 'D' is not a letter A-B" in text
    assert f"{data}:4: messages: no assistant turn" in text
    assert f"{data}:5: answer: 2 is not the 0-based index of a choice: 2 choices, so 0 to 1" in text
    samples, skipped = load_samples([str(data)], skip_bad_rows=True)
    assert len(samples) == 1 and skipped == 4


@pytest.mark.parametrize("answer, expected", [("B", 1), ("(b)", 1), (0, 0), ("blue", 2), ("E", None), (7, None), (True, None)])
def test_answer_index_reads_letters_indices_and_texts(answer, expected):
    assert answer_index(answer, ["red", "green", "blue", "cyan"]) == expected


@pytest.mark.parametrize("text, expected", [
    ("B", 1), ("B.", 1), ("(C) because", 2), ("b", None), ("The answer is C.", 2), ("Answer: A", 0),
    ("green", 1), ("Green.", 1), ("I think D", 3), ("A cat is not a colour", None), ("B or C", None),
    ("B is right", 1), ("", None),
])
def test_pick_choice_reads_the_letter_a_model_writes(text, expected):
    assert pick_choice(text, ["red", "green", "blue", "cyan"]) == expected
