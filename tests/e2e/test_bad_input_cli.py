"""Bad input: exit 1, the file (or model) named once, no Python traceback. `data check` and one training command go
through the real console script; the other refusals through its main() in this process (run_main: the same parsing,
checks, message and exit code, without an interpreter's start per case)."""

import json

import pytest
from e2e_cli import run_cli, run_main

REGISTRY_NAME = "qwen2.5-7b-instruct"  # any name the unknown-model message lists


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "binary.jsonl").write_bytes(bytes(range(256)) * 8)
    (folder / "gbk.csv").write_bytes("prompt,response\n你好，请介绍一下自己,我是一个助手\n".encode("gbk"))
    (folder / "number.json").write_text("42")
    (folder / "truncated.parquet").write_bytes(b"PAR1\x15\x04\x15")
    return folder


def assert_clean_failure(proc, name):
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert name in proc.stderr


def assert_bad_rows_reported(proc, row):
    """data check's report (stdout) names the bad row; the verdict (stderr) counts them, with no traceback."""
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert row in proc.stdout and "bad row(s), listed above" in proc.stderr


@pytest.mark.parametrize("name", ["binary.jsonl", "gbk.csv", "number.json", "truncated.parquet"])
def test_data_check_names_a_corrupt_file(bad_files, name):
    proc = run_main("data", "check", bad_files / name, check=False)
    assert_clean_failure(proc, f"{bad_files / name}")


def test_data_check_points_at_the_line_and_byte_and_suggests_encoding(bad_files):
    proc = run_cli("data", "check", bad_files / "gbk.csv", check=False)
    assert_clean_failure(proc, f"{bad_files / 'gbk.csv'}:2: not utf-8 text (byte 16: 0xc4); pass --encoding")


@pytest.mark.parametrize("name, run", [("binary.jsonl", run_main), ("gbk.csv", run_cli)])  # one through the script
def test_sft_names_a_corrupt_dataset(tiny_model, bad_files, tmp_path, name, run):
    proc = run("sft", "--model", tiny_model, "--dataset", bad_files / name, "--max-steps", "1",
               "--output-dir", tmp_path / "run", check=False)
    assert_clean_failure(proc, f"{bad_files / name}:")


def test_data_check_without_kind_checks_the_rows_as_what_they_are(tmp_path):
    """`data check pairs.jsonl` read DPO pairs as sft rows and listed each as bad; it now checks them as preference
    data and says so. Each kind of row is found; --kind still decides."""
    rows = {"preference": {"prompt": "q", "chosen": "good", "rejected": "bad"},
            "kto": {"prompt": "q", "completion": "a", "label": True},
            "sft": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            "prompts": {"messages": [{"role": "user", "content": "q"}]},
            "pt": {"text": "a plain text"},
            "classification": {"text": "a plain text", "label": "spam"}}
    for kind, row in rows.items():
        path = tmp_path / f"{kind}.jsonl"
        path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
        proc = run_main("data", "check", path)
        assert f"checked as {kind} data" in proc.stdout, (kind, proc.stdout)
    forced = run_main("data", "check", tmp_path / "preference.jsonl", "--kind", "sft", check=False)
    assert forced.returncode == 1 and "check it with --kind preference" in forced.stdout


def test_data_check_lists_each_bad_row_once_on_one_line(tmp_path):
    """The report named every bad row, then the error listed them all again; and rich wrapped a long one at 80
    columns, so `file:line: field` no longer stood on one line."""
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join([
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
        '{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]}',
        '{"question_from_the_old_export": "q", "answer_from_the_old_export": "a"}',
    ]) + "\n")
    proc = run_main("data", "check", path, check=False, env={"COLUMNS": "80"})
    assert_clean_failure(proc, "2 bad row(s)")
    lines = proc.stdout.splitlines()
    for row, field in [(2, "messages[0].content: empty user turn"), (3, "columns: format not recognised")]:
        named = [line for line in lines if f"{path}:{row}:" in line]
        assert len(named) == 1, proc.stdout
        assert named[0].startswith(f"{path}:{row}: {field}")
    assert "answer_from_the_old_export" in next(line for line in lines if f"{path}:3:" in line)


def test_data_check_reads_gbk_with_encoding(bad_files):
    proc = run_main("data", "check", bad_files / "gbk.csv", "--encoding", "gbk", check=False)
    assert proc.returncode == 0 and "good rows" in proc.stdout and "prompt-response: 1" in proc.stdout


# Each command that reads --dataset passes --encoding to the readers: the binary file fails to decode *as gbk*.
@pytest.mark.parametrize("command", [["sft"], ["pt"], ["rlhf", "--method", "dpo"], ["infer"], ["eval"]])
def test_every_dataset_command_reads_with_encoding_and_names_a_corrupt_file(tiny_model, bad_files, tmp_path, command):
    out = ["--output", tmp_path / "answers.jsonl"] if command == ["infer"] else ["--output-dir", tmp_path / "run"]
    proc = run_main(*command, "--model", tiny_model, "--dataset", bad_files / "binary.jsonl", "--encoding", "gbk", *out,
                    check=False)
    assert_clean_failure(proc, f"{bad_files / 'binary.jsonl'}:2: not gbk text (byte 128: 0x80)")


def test_a_row_too_long_for_max_length_is_refused_by_name_before_tokenizing(tiny_model, tmp_path):
    """A 4 MB one-line row: refused as characters (the check before tokenizing), not as a token count."""
    path = tmp_path / "long.jsonl"
    long_chat = {"messages": [{"role": "user", "content": "x" * 4_000_000}, {"role": "assistant", "content": "ok"}]}
    short_chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}
    path.write_text(json.dumps(short_chat) + "\n" + json.dumps(long_chat) + "\n")
    refusal = f"{path}:2: messages[0].content: 4,000,000 characters besides whitespace, more than max_length tokens"
    check = run_main("data", "check", path, "--model", tiny_model, "--max-length", "256", check=False)
    assert_bad_rows_reported(check, refusal)
    sft = run_main("sft", "--model", tiny_model, "--dataset", path, "--max-length", "256", "--max-steps", "1",
                   "--output-dir", tmp_path / "run", check=False)
    assert_clean_failure(sft, refusal)
    assert "--skip-bad-rows" in sft.stderr


def test_sft_refuses_kto_rows_labelled_false_before_training(tiny_model, tmp_path):
    """KTO data given to sft: the rows marked undesirable would be learned as good answers."""
    path = tmp_path / "kto.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}", "label": i != 1}) + "\n"
                            for i in range(3)))
    refusal = f"{path}:2: label: false marks an undesirable answer (KTO data)"
    assert_bad_rows_reported(run_main("data", "check", path, "--kind", "sft", check=False), refusal)
    assert "checked as kto data" in run_main("data", "check", path).stdout  # what the rows are, without --kind
    sft = run_main("sft", "--model", tiny_model, "--dataset", path, "--max-steps", "1",
                   "--output-dir", tmp_path / "run", check=False)
    assert_clean_failure(sft, refusal)
    assert "rlhf --method kto" in sft.stderr and not (tmp_path / "run" / "final").exists()


@pytest.mark.parametrize("command", [["sft", "--dataset", "prd-assistant"], ["infer"]])
def test_an_unknown_model_lists_the_registry_once(command):
    proc = run_main(command[0], "--model", "no-such-model", *command[1:], check=False)
    assert_clean_failure(proc, "model 'no-such-model': no such folder, registry name or hub id")
    assert (proc.stdout + proc.stderr).count(REGISTRY_NAME) == 1



def test_deploy_kernels_liger_is_refused_where_it_cannot_run_and_with_vllm(tiny_model):
    """--kernels liger asks for liger's fused layers by name: on a machine without CUDA the server refuses to start,
    naming the option and what to use instead; with --backend vllm (its own kernels) it is refused before loading."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_main("deploy", "--model", tiny_model, "--kernels", "liger", "--device", "cpu", "--port", port,
                    check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "kernels: liger needs a CUDA GPU" in proc.stderr and "auto or none" in proc.stderr
    proc = run_main("deploy", "--backend", "vllm", "--kernels", "none", check=False)
    assert proc.returncode != 0 and "kernels:" in proc.stderr and "--backend vllm" in proc.stderr


def test_deploy_names_a_keys_file_without_its_keys_mapping_before_loading_a_model(tmp_path):
    # the entries written at the top level (no `keys:` above them): said by file and line, before any weights load
    # (the model named here does not exist, so only a check made before loading can be the one that speaks)
    keys = tmp_path / "keys.yaml"
    keys.write_text("team-a:\n  key: sk-12345678\n  models: [prd]\n")
    proc = run_main("deploy", "--model", tmp_path / "no-model", "--keys", keys, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"{keys}:1: team-a: the keys go under a top-level `keys:` mapping" in proc.stderr


def test_data_check_notes_tools_the_models_template_cannot_render(tiny_model, tmp_path):
    """Rows with tools on a template without a tools branch (the tiny model has SmolLM2's ChatML) trained without the
    tools' definitions, silently: data check says so, naming the first such row and the field."""
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                               "parameters": {"type": "object", "properties": {}}}}]
    rows = [{"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]},
            {"messages": [{"role": "user", "content": "weather in Oslo?"}, {"role": "assistant", "content": "sunny"}],
             "tools": tools}]
    path = tmp_path / "tools.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_main("data", "check", path, "--model", tiny_model, check=False, env={"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert f"note: {path}:2: tools: 1 row(s) define tools, but the chat template of" in proc.stdout
    assert "cannot render them" in proc.stdout
