"""`tunesmith data clean` removes planted exact and near duplicates, empty, garbage and malformed rows, masks planted
personal data (English and Chinese formats) and leaves ordinary numbers alone; --dedupe and --redact-pii do the same
in training."""

import json

import pytest

from tunesmith.data.clean import chinese_id_valid

CN_ID = "11010519491231002X"  # the GB 11643 standard's example: valid check character X
LONG = ("Volunteers arrive at the shelter at eight, sort the donated blankets by size, check the water supply for the "
        "night shift, and write down which families still need a cot before the evening briefing begins.")


def chat(user, answer):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


ROWS = [
    chat("Contact?", "Mail john.doe@example.com or call +1 415-555-0132; card 4111 1111 1111 1111; 221 Baker Street."),  # 1
    chat("联系方式？", f"身份证{CN_ID}，手机13812345678，地址北京市朝阳区建国路88号。"),  # 2
    chat("Numbers?", "We shipped 1234567 units in 2024 (version 10.2.3); order 4111111111111112; "
                     "batch 110105194912310021; pi is 3.14159."),  # 3: ordinary numbers, checks fail
    chat("contact?  ", "mail JOHN.DOE@example.com or call +1 415-555-0132; card 4111 1111 1111 1111; 221 Baker Street."),  # 4
    chat("Shelter routine?", LONG),  # 5
    chat("Shelter routine?", LONG.replace("eight", "nine")),  # 6: near duplicate of 5
    chat("Greeting?", "CafÃ© dÃ©jÃ  vu, the menu says Ã¼ber."),  # 7: mojibake
    chat("Empty?", "   "),  # 8: whitespace answer
    chat("Symbols?", "#### ---- **** //// ==== ++++"),  # 9: no letters
]


def planted(tmp_path):
    path = tmp_path / "raw.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS) + "{not json\n", encoding="utf-8")
    return path


def test_chinese_id_checksum():
    assert chinese_id_valid(CN_ID) and chinese_id_valid(CN_ID.lower())
    assert not chinese_id_valid("110105194912310021") and not chinese_id_valid("1101051949123100")


def test_data_clean_through_the_console_script(tmp_path):
    from e2e.e2e_cli import run_cli

    raw = planted(tmp_path)
    out = tmp_path / "clean.jsonl"
    run_cli("data", "clean", raw, out)
    kept = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    answers = [r["messages"][1]["content"] for r in kept]
    assert len(kept) == 4  # rows 1, 2, 3 and 5
    assert answers[0] == ("Mail <EMAIL_ADDRESS> or call <PHONE_NUMBER>; card <CREDIT_CARD>; <ADDRESS>.")
    assert answers[1] == "身份证<CN_ID_NUMBER>，手机<PHONE_NUMBER>，地址<ADDRESS>。"
    assert answers[2] == ROWS[2]["messages"][1]["content"]  # ordinary numbers left alone
    assert answers[3] == LONG and kept[0]["messages"][0] == {"role": "user", "content": "Contact?"}

    report = json.loads((tmp_path / "clean.jsonl.report.json").read_text(encoding="utf-8"))
    reasons = {entry["row"].rsplit(":", 1)[1]: entry.get("reason") for entry in report["rows"]
               if entry["action"] == "removed"}
    assert reasons["4"] == f"exact duplicate of {raw}:1"
    assert reasons["6"].startswith(f"near duplicate of {raw}:5 (similarity 0.")
    assert "mojibake" in reasons["7"]
    assert "empty" in reasons["8"]
    assert "letters or digits" in reasons["9"]
    assert "json" in reasons["10"]
    assert report["rows_in"] == 10 and report["rows_out"] == 4
    assert report["masked"] == {"EMAIL_ADDRESS": 1, "PHONE_NUMBER": 2, "CREDIT_CARD": 1, "ADDRESS": 2,
                                "CN_ID_NUMBER": 1}
    assert "john.doe" not in json.dumps(report) and CN_ID not in json.dumps(report)  # the report leaks nothing


def test_dedupe_and_redact_pii_as_training_flags(tmp_path):
    from tiny import make_tiny_model

    from tunesmith.config import SFTConfig
    from tunesmith.train.preflight import load_template
    from tunesmith.train.sft import sft_data

    raw = tmp_path / "train.jsonl"
    raw.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS[:6]), encoding="utf-8")
    cfg = SFTConfig(model=str(make_tiny_model(tmp_path / "tiny")), dataset=[str(raw)], dedupe=True, redact_pii=True)
    template, _ = load_template(cfg)
    data = sft_data(cfg, template)
    assert len(data.train) == 4
    assert data.record["cleaning"]["removed"] == {"exact_duplicate": 1, "near_duplicate": 1}
    trained = [template.tokenizer.decode(ids) for ids in data.train["input_ids"]]
    assert all("john.doe" not in text and CN_ID not in text for text in trained)
    assert any("<EMAIL_ADDRESS>" in text for text in trained)


@pytest.mark.parametrize("threshold, removed", [(0.99, 0), (0.5, 1)])
def test_the_threshold_decides_what_is_near(threshold, removed):
    from tunesmith.data.clean import Cleaner

    cleaner = Cleaner(threshold=threshold, redact_pii=False)
    assert cleaner.removal(LONG, "a:1") is None
    assert (cleaner.removal(LONG.replace("eight", "nine"), "a:2") is not None) == bool(removed)


@pytest.mark.parametrize("name", ["clean.csv", "clean.parquet", "clean.json"])
def test_data_clean_refuses_an_output_name_whose_format_it_does_not_write(tmp_path, name):
    """OUT is JSON Lines: under a .csv or .parquet name, `tunesmith sft --dataset OUT` could not read it back."""
    from tunesmith.config import load
    from tunesmith.config.data import DataCleanConfig
    from tunesmith.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"output: writes JSON Lines; name the file .*clean\.jsonl \(not \.{name[6:]}\)"):
        load(DataCleanConfig, ["clean", str(planted(tmp_path)), str(tmp_path / name)])
    assert not (tmp_path / name).exists()
    assert load(DataCleanConfig, ["clean", "in.csv", str(tmp_path / "out.jsonl")]).output.endswith("out.jsonl")
