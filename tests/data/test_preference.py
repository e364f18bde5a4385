"""Preference rows in the shapes users have."""

import json

from tunesmith.data.load import load_rows


def test_preference_shapes_normalise_to_prompt_chosen_rejected(tmp_path):
    rows = [
        {"prompt": "q1", "chosen": "good", "rejected": "bad"},
        {"prompt": [{"role": "user", "content": "q2"}], "chosen": [{"role": "assistant", "content": "good"}],
         "rejected": [{"role": "assistant", "content": "bad"}]},
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q3"},
                      {"role": "assistant", "content": "good"}], "rejected_response": "bad"},
        {"conversations": [{"from": "human", "value": "q4"}], "chosen": {"from": "gpt", "value": "good"},
         "rejected": {"from": "gpt", "value": "bad"}},
        {"instruction": "q5", "input": "ctx", "chosen": "good", "rejected": "bad", "system": "S5"},
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = load_rows([str(path)], kind="preference")
    assert not data.problems
    assert [(r.prompt, r.chosen, r.rejected) for r in data.rows] == [
        ([{"role": "user", "content": "q1"}], "good", "bad"),
        ([{"role": "user", "content": "q2"}], "good", "bad"),
        ([{"role": "system", "content": "S"}, {"role": "user", "content": "q3"}], "good", "bad"),
        ([{"role": "user", "content": "q4"}], "good", "bad"),
        ([{"role": "system", "content": "S5"}, {"role": "user", "content": "q5\n\nctx"}], "good", "bad"),
    ]


def test_bad_preference_rows_name_file_line_and_field(tmp_path):
    rows = [{"prompt": "q", "chosen": "same", "rejected": "same"}, {"prompt": "q", "chosen": "", "rejected": "x"},
            {"chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": 3, "rejected": "b"}, {"prompt": "q"},
            {"prompt": "q", "completion": "a", "label": True}]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    found = [str(p) for p in load_rows([str(path)], kind="preference").problems]
    assert found == [
        f"{path}:1: rejected: identical to chosen: the pair teaches nothing",
        f"{path}:2: chosen: empty chosen answer",
        f"{path}:3: prompt: missing: expected prompt (or question, query, instruction)",
        f"{path}:4: chosen: expected a string, a message or a list of messages, got int",
        f"{path}:5: columns: not a preference row (prompt); expected prompt/chosen/rejected or messages + rejected_response",
        f"{path}:6: columns: not a preference row (completion, label, prompt); expected prompt/chosen/rejected or "
        "messages + rejected_response; a row with a label is KTO data: train it with `tunesmith rlhf --method kto`",
    ]


def test_trls_implicit_prompt_pairs_take_the_shared_turns_as_the_prompt(tmp_path):
    """trl-lib/ultrafeedback_binarized's shape: no prompt column, chosen and rejected are whole conversations."""
    user = [{"role": "system", "content": "S"}, {"role": "user", "content": "Capitale de la France ?"}]
    rows = [
        {"chosen": user + [{"role": "assistant", "content": "Paris"}],
         "rejected": user + [{"role": "assistant", "content": "Lyon"}], "score_chosen": 9.0},
        {"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "good"}],
         "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "bad"}]},
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    for kind in ("preference", "kto"):  # KTO unpairs the same pairs
        data = load_rows([str(path)], kind=kind)
        assert [(r.prompt, r.chosen, r.rejected) for r in data.rows] == [(user, "Paris", "Lyon")]
        assert [str(p) for p in data.problems] == [  # two prompts: which one do the answers answer?
            f"{path}:2: prompt: missing: expected prompt (or question, query, instruction)"]


def test_an_answer_list_that_ends_with_a_user_or_tool_turn_is_a_bad_row_not_the_answer(tmp_path):
    """TRL's conversational pairs end with the assistant's answer; any other last turn is a malformed row."""
    user, good = {"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}
    rows = [
        {"chosen": [user, good, {"role": "user", "content": "thanks"}],  # implicit prompt, chosen ends with the user
         "rejected": [user, good, {"role": "user", "content": "no"}]},
        {"prompt": "q", "chosen": [{"role": "user", "content": "oops"}],
         "rejected": [{"role": "assistant", "content": "bad"}]},
        {"prompt": "q", "chosen": [good], "rejected": [{"role": "tool", "content": "{}"}]},
        {"messages": [user, good], "rejected_response": [{"role": "user", "content": "bad"}]},
        {"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "human", "value": "good"},
         "rejected": {"from": "gpt", "value": "bad"}},
        {"chosen": [user, good], "rejected": [user, {"role": "assistant", "content": "bad"}]},  # still a good row
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = load_rows([str(path)], kind="preference")
    assert [(r.line, r.chosen, r.rejected) for r in data.rows] == [(6, "good", "bad")]
    assert [str(p) for p in data.problems] == [
        f"{path}:1: chosen[2].role: the answer must be the assistant's turn, got role 'user'",
        f"{path}:2: chosen[0].role: the answer must be the assistant's turn, got role 'user'",
        f"{path}:3: rejected[0].role: the answer must be the assistant's turn, got role 'tool'",
        f"{path}:4: rejected_response[0].role: the answer must be the assistant's turn, got role 'user'",
        f"{path}:5: chosen.role: the answer must be the assistant's turn, got role 'human'",
    ]
    assert data.raise_if_bad(skip_bad_rows=True) == 5  # --skip-bad-rows leaves them out, one count a row
    kto = tmp_path / "k.jsonl"
    kto.write_text(json.dumps({"prompt": "q", "completion": [{"role": "user", "content": "x"}], "label": True}))
    assert [str(p) for p in load_rows([str(kto)], kind="kto").problems] == [
        f"{kto}:1: completion[0].role: the answer must be the assistant's turn, got role 'user'"]


def test_implicit_prompt_needs_every_turn_but_the_answer_shared(tmp_path):
    """TRL takes the turns chosen and rejected share as the prompt. Pairs that part before their last turn (a
    multi-turn answer, or two different questions) have no single prompt for a string answer: reported, not guessed."""
    u1, u2 = {"role": "user", "content": "q"}, {"role": "user", "content": "q2"}
    a, b = {"role": "assistant", "content": "good"}, {"role": "assistant", "content": "bad"}
    rows = [
        {"chosen": [u1, a, u2, a], "rejected": [u1, a, u2, b]},  # shared multi-turn prefix: the prompt
        {"chosen": [u1, a, u2, a], "rejected": [u1, b]},         # parts after the first turn
        {"chosen": [u1, a], "rejected": [u2, b]},                # parts at once
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = load_rows([str(path)], kind="preference")
    assert [(r.prompt, r.chosen, r.rejected) for r in data.rows] == [([u1, a, u2], "good", "bad")]
    assert [p.line for p in data.problems] == [2, 3]


def test_answer_lists_beside_a_prompt_may_only_repeat_it(tmp_path):
    """UltraFeedback's layout (a prompt, each answer the whole conversation) reads as the answer; a list whose earlier
    turns are not the prompt's is refused rather than trained on without them."""
    def convo(*turns):
        return [{"role": role, "content": text} for role, text in zip(("user", "assistant") * 3, turns)]

    rows = [
        {"prompt": "q1", "chosen": convo("q1", "good"), "rejected": convo("q1", "bad")},
        {"prompt": "q2", "system": "S", "chosen": convo("q2", "good"), "rejected": convo("q2", "bad")},
        {"prompt": "q3", "chosen": convo("hi", "hello", "q3", "good"), "rejected": convo("q3", "bad")},
        {"prompt": "q4", "chosen": convo("q4", "good"), "rejected": convo("other", "bad")},
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = load_rows([str(path)], kind="preference")
    assert [(r.prompt[-1]["content"], r.chosen, r.rejected) for r in data.rows] == [("q1", "good", "bad"),
                                                                                   ("q2", "good", "bad")]
    assert [str(p).split(": ")[0:2] for p in data.problems] == [[f"{path}:3", "chosen"], [f"{path}:4", "rejected"]]
    assert "would be dropped" in str(data.problems[0])
