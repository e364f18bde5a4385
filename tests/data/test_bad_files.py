"""Every reader fed a corrupt file stops with a DataError naming the file (and the line and byte where there is
one), never a traceback; bad records inside a readable file are problems as `file:line: field: problem`."""

import json
import os

import pytest

from tunesmith.data.load import load_rows
from tunesmith.errors import ConfigError, DataError, TunesmithError

GOOD = [{"prompt": "你好，请介绍一下自己", "response": "我是一个助手"}, {"prompt": "q2", "response": "a2"}]


def jsonl_text(rows):
    return "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n"


def parquet_bytes(rows):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def corrupt_files():
    """name -> (the file's bytes, what the error says right after the path)"""
    garbage = bytes(range(256)) * 8  # NUL, a newline at byte 10, then 0x80: no UTF-8 character starts with it
    whole = parquet_bytes(GOOD * 50)
    return {
        "binary.jsonl": (garbage, ":2: not utf-8 text (byte 128: 0x80); it holds NUL bytes"),
        "binary.csv": (garbage, ":2: not utf-8 text (byte 128: 0x80)"),
        "binary.json": (garbage, ":2: not utf-8 text (byte 128: 0x80)"),
        "binary.parquet": (garbage, ": not a readable Parquet file"),
        "truncated.parquet": (whole[: len(whole) // 2], ": not a readable Parquet file"),
        "empty.parquet": (b"", ": not a readable Parquet file"),
        "gbk.csv": ("prompt,response\nq,a\n你好,我是\n".encode("gbk"), ":3: not utf-8 text (byte 20: 0xc4); pass --encoding"),
        "gbk.jsonl": (jsonl_text(GOOD).encode("gbk"), ":1: not utf-8 text (byte 12: 0xc4); pass --encoding"),
        "utf16.json": (json.dumps(GOOD).encode("utf-16"), (":1: not utf-8 text (byte 0: 0xff); it starts with a UTF-16 "
                                                          "byte-order mark: pass --encoding utf-16")),
        "cut.csv": ("prompt,response\nq,你".encode()[:-1], ":2: not utf-8 text (byte 18: 0xe4)"),
        "number.json": (b"42", ": expected a JSON list of rows, got int"),
        "string.json": (b'"rows"', ": expected a JSON list of rows, got str"),
        "two_lists.json": (b'{"a": [], "b": []}', ": expected a JSON list of rows (or an object holding one list)"),
        "notes.txt": (b"hello", ": unsupported file type .txt"),
    }


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corrupt")
    cases = corrupt_files()
    for name, (content, _) in cases.items():
        (folder / name).write_bytes(content)
    return folder, cases


@pytest.mark.parametrize("name", ["binary.jsonl", "binary.csv", "binary.json", "binary.parquet", "truncated.parquet",
                                  "empty.parquet", "gbk.csv", "gbk.jsonl", "utf16.json", "cut.csv", "number.json",
                                  "string.json", "two_lists.json", "notes.txt"])
@pytest.mark.parametrize("kind", ["sft", "preference"])
def test_a_corrupt_file_is_a_data_error_naming_it(corrupt, name, kind):
    folder, cases = corrupt
    with pytest.raises(DataError) as err:
        load_rows([str(folder / name)], kind=kind)
    assert str(err.value).startswith(f"{folder / name}{cases[name][1]}"), str(err.value)


def test_a_folder_names_its_corrupt_file_and_skips_hidden_ones(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / ".ipynb_checkpoints").mkdir()
    (data / "a.jsonl").write_text(jsonl_text(GOOD), encoding="utf-8")
    (data / ".ipynb_checkpoints" / "a-checkpoint.jsonl").write_bytes(b"\xff\xfe junk")  # Jupyter's copies: not data
    assert len(load_rows([str(data)], kind="sft").rows) == 2
    (data / "sub" / "b.CSV").write_bytes("prompt,response\n你,好\n".encode("gbk"))
    with pytest.raises(DataError, match=rf"^{data / 'sub' / 'b.CSV'}:2: not utf-8 text"):
        load_rows([str(data)], kind="sft")


def test_encoding_reads_gbk_utf16_and_a_utf8_bom_by_default(tmp_path):
    (tmp_path / "gbk.csv").write_bytes("prompt,response\n你好,我是一个助手\n".encode("gbk"))
    (tmp_path / "gbk.jsonl").write_bytes(jsonl_text(GOOD).encode("gbk"))
    (tmp_path / "u16.json").write_bytes(json.dumps(GOOD, ensure_ascii=False).encode("utf-16"))
    (tmp_path / "bom.jsonl").write_bytes(jsonl_text(GOOD).encode("utf-8-sig"))
    (tmp_path / "bom.csv").write_bytes("prompt,response\nq,a\n".encode("utf-8-sig"))
    assert load_rows([str(tmp_path / "gbk.csv")], kind="sft", encoding="gbk").rows[0].messages[0]["content"] == "你好"
    assert len(load_rows([str(tmp_path / "gbk.jsonl")], kind="sft", encoding="GBK").rows) == 2
    assert load_rows([str(tmp_path / "u16.json")], kind="sft", encoding="utf-16").rows[0].messages[0]["content"] == GOOD[0]["prompt"]
    bom = load_rows([str(tmp_path / "bom.jsonl"), str(tmp_path / "bom.csv")], kind="sft")
    assert not bom.problems and len(bom.rows) == 3
    # shipped registry data stays utf-8 whatever --encoding says for the user's files
    assert load_rows(["prd-assistant#3", str(tmp_path / "gbk.csv")], kind="sft", encoding="gbk").rows
    for name in ("klingon", "hex", "undefined"):
        with pytest.raises(ConfigError, match=f"encoding: '{name}' is not a text encoding"):
            load_rows([str(tmp_path / "gbk.csv")], kind="sft", encoding=name)


def test_bad_records_in_a_readable_file_are_problems_with_file_and_line(tmp_path):
    csv_path = tmp_path / "ragged.csv"
    csv_path.write_text('prompt,response\nq,a\nq,a,extra\nonly\n"never closed,x\ny,z\n', encoding="utf-8")
    jsonl_path = tmp_path / "odd.jsonl"
    jsonl_path.write_text("\n".join([json.dumps(GOOD[1]), "[" * 100_000, '{"prompt": 1' + "0" * 5000 + "}", "7",
                                     "[1, 2]", "null", "{not json"]) + "\n", encoding="utf-8")
    json_path = tmp_path / "numbers.json"
    json_path.write_text("[1, null, {\"prompt\": \"q\", \"response\": \"a\"}]", encoding="utf-8")
    data = load_rows([str(csv_path), str(jsonl_path), str(json_path)], kind="sft")
    assert len(data.rows) == 3
    assert [str(p) for p in data.problems] == [  # sorted by file, then line
        f"{json_path}:row 0: row: expected a JSON object, got int",
        f"{json_path}:row 1: row: expected a JSON object, got NoneType",
        f"{jsonl_path}:2: json: not readable JSON (nested too deeply)",
        f"{jsonl_path}:3: json: not readable JSON (Exceeds the limit (4300 digits) for integer string conversion)",
        f"{jsonl_path}:4: row: expected a JSON object, got int",
        f"{jsonl_path}:5: row: expected a JSON object, got list",
        f"{jsonl_path}:6: row: expected a JSON object, got NoneType",
        f"{jsonl_path}:7: json: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        f"{csv_path}:3: row: 3 field(s), but the header has 2; quote fields that hold a comma or a line break",
        f"{csv_path}:4: row: 1 field(s), but the header has 2; quote fields that hold a comma or a line break",
        f"{csv_path}:6: row: 1 field(s), but the header has 2; quote fields that hold a comma or a line break",
    ]


def test_a_long_csv_field_is_a_row_not_an_error(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("prompt,response\nq," + "a" * 200_000 + "\n", encoding="utf-8")  # over csv's 128 KiB default
    assert len(load_rows([str(path)], kind="sft").rows[0].messages[1]["content"]) == 200_000


# Odd values under every key a reader may meet: each becomes a problem, never an exception.
KEYS = ["messages", "conversations", "instruction", "input", "output", "system", "history", "prompt", "response",
        "question", "answer", "completion", "text", "chosen", "rejected", "rejected_response", "label", "tools"]
ODD = [None, 1, 1.5, True, "", [], {}, [None], [["q"]], [{"role": ["user"], "content": "x"}],
       [{"from": {"h": 1}, "value": "x"}], [{"role": "user", "content": None}], [{"from": "human", "value": 3}],
       [{"role": "user", "content": [{"type": "image"}]}], {"role": "assistant", "content": 3}]
BASES = [{}, {"prompt": "q", "response": "a"}, {"instruction": "q", "output": "a"}, {"prompt": "q", "chosen": "a", "rejected": "b"},
         {"prompt": "q", "completion": "a", "label": True}, {"conversations": [{"from": "human", "value": "q"}]},
         {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]


@pytest.mark.parametrize("kind", ["sft", "pt", "prompts", "preference", "kto"])
def test_odd_values_in_any_column_are_problems_never_exceptions(tmp_path, kind):
    rows = [{**base, key: value} for base in BASES for key in KEYS for value in ODD]
    path = tmp_path / "odd.jsonl"
    path.write_text(jsonl_text(rows), encoding="utf-8")
    try:
        data = load_rows([str(path)], kind=kind, max_chars=1000)
    except TunesmithError:
        return
    assert len(data.rows) + len(data.problems) == len(rows)


def test_random_bytes_never_escape_as_an_exception(tmp_path):
    import random

    rng = random.Random(0)
    for i in range(40):
        suffix = [".jsonl", ".json", ".csv", ".parquet"][i % 4]
        path = tmp_path / f"r{i}{suffix}"
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))))
        try:
            load_rows([str(path)], kind="sft")
        except TunesmithError as err:
            assert str(err).startswith(str(path)) or "bad row" in str(err), str(err)


def test_unreadable_file_is_named(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = tmp_path / "locked.jsonl"
    path.write_text(jsonl_text(GOOD))
    path.chmod(0)
    with pytest.raises(DataError, match=rf"^{path}: cannot read"):
        load_rows([str(path)], kind="sft")


def test_an_impossible_path_is_named():
    with pytest.raises(DataError, match=r"^a{200}: not a usable path \(File name too long\)"):
        load_rows(["a" * 5000 + ".jsonl"], kind="sft")
    with pytest.raises(DataError, match=r"^a\x00b.jsonl: file not found"):
        load_rows(["a\x00b.jsonl"], kind="sft")


def test_an_encoding_that_needs_a_byte_order_mark_and_packed_files_say_what_to_do(tmp_path):
    import gzip

    no_bom = tmp_path / "le.jsonl"
    no_bom.write_bytes(jsonl_text(GOOD).encode("utf-16-le"))  # what Windows calls "Unicode" when saved without a mark
    with pytest.raises(DataError, match=rf"^{no_bom}:1: not utf-16 text \(byte 0: no byte-order mark\); pass "
                                        r"--encoding utf-16-le \(Windows' 'Unicode'\) or utf-16-be$"):
        load_rows([str(no_bom)], kind="sft", encoding="utf-16")
    assert len(load_rows([str(no_bom)], kind="sft", encoding="utf-16-le").rows) == 2
    packed = tmp_path / "data.jsonl"
    packed.write_bytes(gzip.compress(jsonl_text(GOOD * 100).encode())[:200])  # gzip, and cut short
    with pytest.raises(DataError, match=rf"^{packed}:1: not utf-8 text \(byte 1: 0x8b\); it is gzip-compressed, "
                                        r"not \.jsonl text: gunzip it first$"):
        load_rows([str(packed)], kind="sft")


def test_a_json_list_is_read_item_by_item_as_json_reads_it_whole(tmp_path, monkeypatch):
    """The JSON reader walks the list itself (data/readers.py _JsonStream); with chunks of a few characters every
    value is cut somewhere, and the rows must still equal json.loads' and errors name json's line."""
    import random

    from tunesmith.data import readers

    rng = random.Random(0)
    values = [1, -12.5e3, 10**20, 'x\n"y\\u00e9', "é你😀", None, True, [], {}, [1, [2]], {"k": {"j": [0.5]}}]
    path = tmp_path / "d.json"
    for trial in range(300):
        monkeypatch.setattr(readers._JsonStream, "CHUNK", rng.randrange(1, 24))
        rows = [{f"k{i}": rng.choice(values) for i in range(rng.randrange(4))} for _ in range(rng.randrange(5))]
        doc = rows if trial % 2 else {"meta": rng.choice(values), "data": rows, "n": 3}
        text = json.dumps(doc, indent=rng.choice([None, 1]), ensure_ascii=trial % 3 == 0)
        if trial % 4 == 3:  # break it somewhere
            cut = rng.randrange(len(text))
            text = text[:cut] + rng.choice(["", "}", ",", "x", '"']) + text[cut + 1:]
        path.write_text(text, encoding="utf-8")
        problems = []
        try:
            want = json.loads(text)
        except json.JSONDecodeError as err:
            list(readers._read_json(path, problems, "utf-8"))
            assert [(p.line, p.field) for p in problems] == [(err.lineno, "json")], text
            assert problems[0].problem.startswith(f"not valid JSON ({err.msg}"), (text, problems)
            continue
        if isinstance(want, dict):
            want = [v for v in want.values() if isinstance(v, list)]
            want = want[0] if len(want) == 1 else None
        if not isinstance(want, list):
            with pytest.raises(DataError):
                list(readers._read_json(path, problems, "utf-8"))
            continue
        assert [r.data for r in readers._read_json(path, problems, "utf-8")] == want and not problems, text


def test_a_json_list_broken_midway_keeps_the_rows_before_and_says_where(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('[\n{"prompt": "q", "response": "a"},\n{"prompt": "q2", "response": \n', encoding="utf-8")
    data = load_rows([str(path)], kind="sft")
    assert len(data.rows) == 1
    assert [str(p) for p in data.problems] == [
        f"{path}:4: json: not valid JSON (Expecting value at column 1); the rows after it were not read"]
    path.write_text('[{"prompt": "q", "response": "a"}] trailing', encoding="utf-8")
    assert [str(p) for p in load_rows([str(path)], kind="sft").problems] == [
        f"{path}:1: json: not valid JSON (Extra data at column 36); the rows after it were not read"]


def test_a_json_list_named_jsonl_and_json_lines_named_json_are_read_as_what_they_hold(tmp_path):
    """Two common slips: json.dump(rows) saved as .jsonl (on one line or indented), and JSON Lines saved as .json,
    whose first row's lists (its messages) were read as the rows. Both read as their content says."""
    rows = [{"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]},
            {"prompt": "你好", "response": "a2"}]
    (tmp_path / "list.jsonl").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "indented.jsonl").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    (tmp_path / "lines.json").write_text("\ufeff" + jsonl_text(rows).replace("\n", "\r\n") + "\r\n", encoding="utf-8")
    for name in ("list.jsonl", "indented.jsonl", "lines.json"):
        data = load_rows([str(tmp_path / name)], kind="sft")
        assert not data.problems, (name, data.problems)
        assert [r.messages[-1]["content"] for r in data.rows] == ["a1", "a2"]
    wrapper = tmp_path / "wrapper.json"  # an object holding the list, on one line: still the list's rows
    wrapper.write_text(json.dumps({"version": 2, "data": rows}) + "\n", encoding="utf-8")
    assert len(load_rows([str(wrapper)], kind="sft").rows) == 2
