"""Formats detected from the columns, bad rows reported as file:line: field: problem, #N sampling, registry."""

import json

import pytest

from tunesmith.data.load import load_rows
from tunesmith.errors import DataError

ROWS = [
    {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]},
    {"conversations": [{"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}], "system": "S2"},
    {"instruction": "do", "input": "this", "output": "a3"},
    {"prompt": "q4", "response": "a4"},
    {"question": "q5", "answer": "a5"},
    {"prompt": [{"role": "user", "content": "q6"}], "completion": [{"role": "assistant", "content": "a6"}]},
]


def write_jsonl(path, rows, raw_lines=()):
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_every_format_becomes_the_same_conversation_shape(tmp_path):
    data = load_rows([str(write_jsonl(tmp_path / "d.jsonl", ROWS))], kind="sft")
    assert not data.problems
    got = [[(m["role"], m["content"]) for m in r.messages] for r in data.rows]
    assert got[0] == [("system", "S"), ("user", "q1"), ("assistant", "a1")]
    assert got[1] == [("system", "S2"), ("user", "q2"), ("assistant", "a2")]
    assert got[2] == [("user", "do\n\nthis"), ("assistant", "a3")]
    assert got[3] == [("user", "q4"), ("assistant", "a4")]
    assert got[4] == [("user", "q5"), ("assistant", "a5")]
    assert got[5] == [("user", "q6"), ("assistant", "a6")]
    assert data.formats == {"messages": 1, "sharegpt": 1, "alpaca": 1, "prompt-response": 3}


def test_csv_parquet_and_json_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.csv").write_text("instruction,input,output\nsay hi,,hi\n", encoding="utf-8")
    pq.write_table(pa.Table.from_pylist([{"prompt": "p", "response": "r"}]), tmp_path / "d.parquet")
    (tmp_path / "d.json").write_text(json.dumps([{"text": "raw text"}]), encoding="utf-8")
    assert len(load_rows([str(tmp_path / "d.csv"), str(tmp_path / "d.parquet")], kind="sft").rows) == 2
    assert load_rows([str(tmp_path / "d.json")], kind="pt").rows[0].text == "raw text"


def test_bad_rows_are_reported_with_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        {"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "fine"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]},
        {"messages": [{"role": "robot", "content": "q"}]},
        {"messages": [{"role": "user", "content": ["not", "text"]}]},
        {"messages": [{"role": "user", "content": "no answer"}]},
        {"unrelated": 1},
    ], raw_lines=["{broken json"])
    data = load_rows([str(path)], kind="sft")
    found = [str(p) for p in data.problems]
    assert found == [
        f"{path}:2: messages[1].content: empty assistant turn (the model would learn to answer nothing)",
        f"{path}:3: messages[0].role: unknown role 'robot'; expected one of assistant, system, tool, user",
        f"{path}:4: messages[0].content: expected a string, got list",
        f"{path}:5: messages: no assistant turn to learn from (prompts for infer? check them with --kind prompts)",
        (f"{path}:6: columns: format not recognised from columns (unrelated); expected messages, conversations, "
        "instruction/output, prompt/response or text"),
        f"{path}:7: json: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
    ]
    assert len(data.rows) == 1
    with pytest.raises(DataError, match="6 bad row"):
        data.raise_if_bad(skip_bad_rows=False)
    assert data.raise_if_bad(skip_bad_rows=True) == 6


def test_alignment_rows_given_to_sft_name_the_command_that_takes_them(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "q", "chosen": "good", "rejected": "bad"},
        {"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "good"},
         "rejected": {"from": "gpt", "value": "bad"}},
        {"prompt": "a question with no answer"},
        {"prompt": "q", "completion": "a wrong answer", "label": False},
        {"prompt": "q", "completion": "a right answer", "label": True},
        {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
         "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}]},
    ])
    data = load_rows([str(path)], kind="sft")
    data.refuse_undesirable_answers()
    assert [str(p) for p in data.problems] == [
        f"{path}:1: chosen: a preference pair (chosen/rejected) has no single answer for sft to learn; train on it "
        "with `tunesmith rlhf --method dpo` (or orpo, simpo, cpo, rm), or check it with --kind preference",
        f"{path}:2: chosen: a preference pair (chosen/rejected) has no single answer for sft to learn; train on it "
        "with `tunesmith rlhf --method dpo` (or orpo, simpo, cpo, rm), or check it with --kind preference",
        f"{path}:3: response: no assistant turn to learn from (prompts for infer? check them with --kind prompts)",
        f"{path}:4: label: false marks an undesirable answer (KTO data), which sft would learn as a good one; train "
        "on it with `tunesmith rlhf --method kto`, or leave the row out",
        f"{path}:6: chosen: a preference pair (chosen/rejected) has no single answer for sft to learn; train on it "
        "with `tunesmith rlhf --method dpo` (or orpo, simpo, cpo, rm), or check it with --kind preference",
    ]
    assert [r.line for r in data.rows] == [5]
    assert len(load_rows([str(path)], kind="preference").rows) == 3  # the pairs themselves are fine


def test_sampling_with_hash_count_is_seeded(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(10)])
    a = load_rows([f"{path}#4"], kind="sft", seed=1)
    b = load_rows([f"{path}#4"], kind="sft", seed=1)
    assert len(a.rows) == 4 and [r.line for r in a.rows] == [r.line for r in b.rows]
    assert len(load_rows([f"{path}#25"], kind="sft").rows) == 25  # more than the file: repeats it


def test_registry_ships_prd_and_self_cognition_with_name_substitution():
    prd = load_rows(["prd-assistant"], kind="sft")
    assert len(prd.rows) >= 200 and not prd.problems
    langs = {any("\u4e00" <= c <= "\u9fff" for c in r.messages[0]["content"]) for r in prd.rows}
    assert langs == {True, False}  # Chinese and English
    me = load_rows(["self-cognition#5"], kind="sft", substitutions={"name": "PRD-Bot", "author": "Acme"})
    answers = " ".join(r.messages[-1]["content"] for r in me.rows)
    assert "PRD-Bot" in answers and "{{" not in answers


def test_missing_file_and_unknown_name_say_what_is_wrong():
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        load_rows(["nope.jsonl"], kind="sft")
    with pytest.raises(DataError, match="Registry names: .*prd-assistant"):
        load_rows(["no-such-dataset"], kind="sft")


def test_tool_calls_not_in_openai_shape_are_bad_rows_not_a_crash_in_the_template(tmp_path):
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": calls},
                          {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "It is sunny."}]}
            for calls in ([call], [{"name": "f", "arguments": "{}"}], json.dumps([call]), "get_weather", ["get_weather"],
                          [{"type": "function", "function": {"arguments": {}}}],
                          [{"type": "function", "function": {"name": "f", "arguments": 3}}])]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    data = load_rows([str(path)], kind="sft")
    assert [r.line for r in data.rows] == [1, 2, 3]
    assert data.rows[2].messages[1]["tool_calls"] == [call]  # calls written as JSON text (some hub datasets do)
    assert [str(p) for p in data.problems] == [
        f"{path}:4: messages[1].tool_calls: expected a list of calls, got str",
        f"{path}:5: messages[1].tool_calls[0]: expected an object with a function, got str",
        f"{path}:6: messages[1].tool_calls[0].function.name: expected the called function's name",
        f"{path}:7: messages[1].tool_calls[0].function.arguments: expected an object or a JSON string, got int",
    ]


def test_tool_definitions_not_in_openai_shape_are_bad_rows_and_none_is_dropped_silently(tmp_path):
    """A `tools` column that was no list (one tool as an object, or text that is no JSON list) was dropped without a
    word, training the calls with no tools rendered; definitions without a name reached the template mid-run."""
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}
    base = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    tools_cells = ([tool], [tool["function"]], json.dumps([tool]), "", tool, "get_weather",
                   [{"type": "function", "function": {"description": "no name"}}],
                   [{"name": "f", "parameters": "city: str"}], ["get_weather"])
    path = write_jsonl(tmp_path / "d.jsonl", [{**base, "tools": cell} for cell in tools_cells])
    data = load_rows([str(path)], kind="sft")
    assert [(r.line, r.extra.get("tools")) for r in data.rows] == [
        (1, [tool]), (2, [tool["function"]]), (3, [tool]), (4, None)]
    assert [str(p) for p in data.problems] == [
        f"{path}:5: tools: expected a list of tool definitions, got dict",
        f"{path}:6: tools: expected a list of tool definitions, got str",
        f"{path}:7: tools[0].function.name: expected the function's name",
        f"{path}:8: tools[0].parameters: expected a JSON schema object, got str",
        f"{path}:9: tools[0]: expected an object with a function, got str",
    ]


def test_a_csv_cell_holding_messages_as_json_text_is_read_as_the_messages(tmp_path):
    import csv

    messages = [{"role": "system", "content": "Be brief, señor."}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}]
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}]
    path = tmp_path / "chats.csv"
    with path.open("w", newline="", encoding="utf-8") as f:  # as pandas' to_csv writes a column of lists
        writer = csv.writer(f)
        writer.writerow(["messages", "tools"])
        writer.writerow([json.dumps(messages, ensure_ascii=False), json.dumps(tools)])
        writer.writerow(["not json at all", ""])
    data = load_rows([str(path)], kind="sft")
    assert [r.messages for r in data.rows] == [messages] and data.rows[0].extra["tools"] == tools
    assert [str(p) for p in data.problems] == [f"{path}:3: messages: expected a list of messages, got str"]


def test_parquet_rows_are_detected_and_checked_as_written_not_with_arrows_filled_in_nones(tmp_path):
    """Arrow gives every row every column and every message every key (None where it had none): a `loss: false` on
    one message made every other message's `loss: None` a bad row, and a file mixing formats lost its rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "loss": False},
                      {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]},
        {"instruction": "do", "input": "this", "output": "a3"},
        {"prompt": "q4", "response": "a4", "system": "S"},
    ]
    path = tmp_path / "mixed.parquet"
    pq.write_table(pa.Table.from_struct_array(pa.array(rows)), path)  # one schema: the union of every row's keys
    data = load_rows([str(path)], kind="sft")
    assert not data.problems
    assert [r.messages for r in data.rows] == [
        rows[0]["messages"], [{"role": "user", "content": "do\n\nthis"}, {"role": "assistant", "content": "a3"}],
        [{"role": "system", "content": "S"}, {"role": "user", "content": "q4"}, {"role": "assistant", "content": "a4"}]]
    assert data.formats == {"messages": 1, "alpaca": 1, "prompt-response": 1}


def test_alpaca_prompts_without_output_keep_their_instruction(tmp_path):
    """Prompts for infer and grpo in Alpaca's shape: `instruction` + `input` was read as a prompt/response row whose
    prompt is `input` alone (the instruction silently dropped), and `instruction` alone was not recognised."""
    path = write_jsonl(tmp_path / "p.jsonl", [{"instruction": "Translate to French", "input": "cat", "id": 1},
                                              {"instruction": "Say hi"}, {"instruction": "Say hi", "input": ""}])
    data = load_rows([str(path)], kind="prompts")
    assert not data.problems
    assert [r.messages for r in data.rows] == [[{"role": "user", "content": "Translate to French\n\ncat"}],
                                               [{"role": "user", "content": "Say hi"}],
                                               [{"role": "user", "content": "Say hi"}]]
    assert data.rows[0].extra["id"] == 1  # extra columns still reach grpo's rewards
    assert [str(p) for p in load_rows([str(path)], kind="sft").problems][0] == (
        f"{path}:1: output: no assistant turn to learn from (prompts for infer? check them with --kind prompts)")


def test_a_system_prompt_alone_is_a_prompt_as_deploy_takes_it(tmp_path):
    """infer refused what deploy (and OpenAI's API) answers; a training row still needs a turn to learn from."""
    system_only = {"messages": [{"role": "system", "content": "You are a pirate."}]}
    path = write_jsonl(tmp_path / "p.jsonl", [system_only, {"messages": []}])
    data = load_rows([str(path)], kind="prompts")
    assert [r.messages for r in data.rows] == [system_only["messages"]]
    assert [str(p) for p in data.problems] == [f"{path}:2: messages: no user or assistant turn"]
    assert [str(p) for p in load_rows([str(path)], kind="sft").problems][0] == (
        f"{path}:1: messages: no user or assistant turn")


def test_openais_developer_role_is_the_system_turn_as_deploy_reads_it(tmp_path):
    # chat logs exported from OpenAI's newer API carry "developer" where older ones carry "system"
    row = {"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a"}]}
    data = load_rows([str(write_jsonl(tmp_path / "d.jsonl", [row]))], kind="sft")
    assert not data.problems
    assert [(m["role"], m["content"]) for m in data.rows[0].messages] == [
        ("system", "Be brief."), ("user", "q"), ("assistant", "a")]


def test_dolly_rows_are_alpaca_with_context_as_input_and_response_as_output(tmp_path):
    """databricks-dolly-15k's instruction/context/response/category rows were "format not recognised", and an
    instruction + input + response row was read as prompt/response with `input` alone as the prompt."""
    path = write_jsonl(tmp_path / "dolly.jsonl", [
        {"instruction": "Who wrote it?", "context": "Dune was written by Frank Herbert.", "response": "Frank Herbert.",
         "category": "closed_qa"},
        {"instruction": "Name a fruit.", "context": "", "response": "Apple."},
        {"instruction": "Summarise", "input": "a long text", "response": "short"},
        {"instruction": "Answer", "context": "c", "response": ""},
    ])
    data = load_rows([str(path)], kind="sft")
    assert [[(m["role"], m["content"]) for m in r.messages] for r in data.rows] == [
        [("user", "Who wrote it?\n\nDune was written by Frank Herbert."), ("assistant", "Frank Herbert.")],
        [("user", "Name a fruit."), ("assistant", "Apple.")],
        [("user", "Summarise\n\na long text"), ("assistant", "short")]]
    assert data.formats == {"alpaca": 3}
    assert [str(p) for p in data.problems] == [
        f"{path}:4: response: empty assistant turn (the model would learn to answer nothing)"]
