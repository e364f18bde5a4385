"""Bad input through the real console script: exit 1, the file (or model) named once, no Python traceback."""

import pytest

from conftest import run_cli

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


@pytest.mark.parametrize("name", ["binary.jsonl", "gbk.csv", "number.json", "truncated.parquet"])
def test_data_check_names_a_corrupt_file(bad_files, name):
    proc = run_cli("data", "check", bad_files / name, check=False)
    assert_clean_failure(proc, f"{bad_files / name}")


def test_data_check_points_at_the_line_and_byte_and_suggests_encoding(bad_files):
    proc = run_cli("data", "check", bad_files / "gbk.csv", check=False)
    assert_clean_failure(proc, f"{bad_files / 'gbk.csv'}:2: not utf-8 text (byte 16: 0xc4); pass --encoding")


@pytest.mark.parametrize("name", ["binary.jsonl", "gbk.csv"])
def test_sft_names_a_corrupt_dataset(tiny_model, bad_files, tmp_path, name):
    proc = run_cli("sft", "--model", tiny_model, "--dataset", bad_files / name, "--max-steps", "1",
                   "--output-dir", tmp_path / "run", check=False)
    assert_clean_failure(proc, f"{bad_files / name}:")


@pytest.mark.xfail(strict=True, reason="train/check.py does not pass cfg.encoding to load_rows yet (R1 item 8 wiring)")
def test_data_check_reads_gbk_with_encoding(bad_files):
    proc = run_cli("data", "check", bad_files / "gbk.csv", "--encoding", "gbk", check=False)
    assert proc.returncode == 0 and "good rows" in proc.stderr


@pytest.mark.parametrize("command", [["sft", "--dataset", "prd-assistant"], ["infer"]])
def test_an_unknown_model_lists_the_registry_once(command):
    proc = run_cli(command[0], "--model", "no-such-model", *command[1:], check=False)
    assert_clean_failure(proc, "model 'no-such-model': no such folder, registry name or hub id")
    assert (proc.stdout + proc.stderr).count(REGISTRY_NAME) == 1

