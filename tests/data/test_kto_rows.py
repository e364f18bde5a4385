"""KTO rows (prompt + completion + label) and the preference pairs a KTO file may also hold."""

import json

from tunesmith.data.load import load_rows
from tunesmith.data.rows import Preference, UnpairedPreference


def _write(tmp_path, rows, name="k.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_kto_shapes_normalise_to_prompt_completion_label(tmp_path):
    rows = [
        {"prompt": "q1", "completion": "good", "label": True},
        {"prompt": [{"role": "user", "content": "q2"}], "completion": [{"role": "assistant", "content": "bad"}],
         "label": False},
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q3"},
                      {"role": "assistant", "content": "good"}], "label": True},
        {"question": "q4", "completion": "bad", "label": "false"},  # CSV spelling
        {"prompt": "q5", "completion": "good", "label": 1},  # Parquet/hub spelling
        {"prompt": "q7", "completion": "bad", "label": 0.0},  # pandas: an int column with a gap is float
        {"prompt": "q8", "completion": "good", "label": "1.0"},  # ... and so is its to_csv
        {"prompt": "q6", "chosen": "good", "rejected": "bad"},  # a pair: KTO unpairs it later
    ]
    data = load_rows([str(_write(tmp_path, rows))], kind="kto")
    assert not data.problems
    unpaired = [(r.prompt, r.completion, r.label) for r in data.rows if isinstance(r, UnpairedPreference)]
    assert unpaired == [
        ([{"role": "user", "content": "q1"}], "good", True),
        ([{"role": "user", "content": "q2"}], "bad", False),
        ([{"role": "system", "content": "S"}, {"role": "user", "content": "q3"}], "good", True),
        ([{"role": "user", "content": "q4"}], "bad", False),
        ([{"role": "user", "content": "q5"}], "good", True),
        ([{"role": "user", "content": "q7"}], "bad", False),
        ([{"role": "user", "content": "q8"}], "good", True),
    ]
    assert isinstance(data.rows[-1], Preference) and data.formats == {"kto": 7, "preference": 1}


def test_bad_kto_rows_name_file_line_and_field(tmp_path):
    rows = [{"prompt": "q", "completion": "a", "label": "yes"}, {"prompt": "q", "completion": "a"},
            {"prompt": "q", "label": True}, {"prompt": "q", "completion": " ", "label": False},
            {"messages": [{"role": "user", "content": "q"}], "label": True}, {"text": "t"},
            {"prompt": "q", "completion": "a", "label": 2}]
    path = _write(tmp_path, rows)
    found = [str(p) for p in load_rows([str(path)], kind="kto").problems]
    assert found == [
        f"{path}:1: label: expected true (desirable) or false (undesirable), got 'yes'",
        f"{path}:2: label: missing: expected true (desirable) or false (undesirable)",
        f"{path}:3: completion: missing: expected the assistant answer that label judges",
        f"{path}:4: completion: empty completion",
        f"{path}:5: messages: the last message must be the assistant answer that label judges",
        (f"{path}:6: columns: not a KTO row (text); expected prompt/completion/label, messages + label, or a "
        "preference pair (prompt/chosen/rejected)"),
        f"{path}:7: label: expected true (desirable) or false (undesirable), got 2",
    ]


def test_a_completion_list_beside_a_prompt_may_only_repeat_it(tmp_path):
    def convo(*turns):
        return [{"role": role, "content": text} for role, text in zip(("user", "assistant") * 3, turns)]

    rows = [{"prompt": "q1", "completion": convo("q1", "good"), "label": True},
            {"prompt": "q2", "completion": convo("hi", "hello", "q2", "good"), "label": False}]
    path = tmp_path / "k.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = load_rows([str(path)], kind="kto")
    assert [(r.prompt, r.completion, r.label) for r in data.rows] == [([{"role": "user", "content": "q1"}], "good", True)]
    assert [str(p) for p in data.problems] == [
        f"{path}:2: completion: its 3 turn(s) before the answer are not the prompt's, and would be dropped: give "
        "completion as the answer alone, or messages + label without a prompt column"]
