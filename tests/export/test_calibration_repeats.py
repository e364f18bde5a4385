"""GPTQ/AWQ calibration on data of fewer rows than calib_samples. Before: the rows were repeated up to calib_samples
(data/load.py's name#N), so 5 rows calibrated as 64, slower and skewed toward the rows drawn once more; now each
row is used once, one line says how many, and export's record (lineage.json calibration_rows, len of these rows)
counts those. On CPU: the sample builder only, not the quantization."""

import json
import logging

from tunesmith.export import compress

ROWS = [{"messages": [{"role": "user", "content": f"name {w}"}, {"role": "assistant", "content": f"{w.upper()} OK"}]}
        for w in ("apple", "river", "stone", "cloud", "maple")]


def calibrate(tiny_model, specs, samples):
    from tunesmith.templates import Template

    template = Template.load(tiny_model)
    rows = compress.calibration(template, specs, samples=samples, max_length=2048, seed=42, encoding="utf-8")
    return template, rows


def test_five_rows_and_calib_samples_64_calibrate_on_the_five_rows_once(tiny_model, tmp_path, caplog):
    data = tmp_path / "five.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with caplog.at_level(logging.INFO, logger="tunesmith"):
        template, rows = calibrate(tiny_model, [str(data)], samples=64)
    assert len(rows) == 5  # not 64
    assert {tuple(r) for r in rows} == {tuple(template.tokenizer(template.render_text(r["messages"]),
                                                                 add_special_tokens=False)["input_ids"]) for r in ROWS}
    said = [r.getMessage() for r in caplog.records if "calib" in r.getMessage() or "repeated" in r.getMessage()]
    assert said == ["calibrating on 5 rows (fewer than calib_samples = 64): the calibration data has no more, and a "
                    "row repeated adds nothing"]


def test_an_explicit_count_and_a_file_given_twice_still_use_each_row_once(tiny_model, tmp_path):
    data = tmp_path / "five.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    _, rows = calibrate(tiny_model, [f"{data}#20", str(data)], samples=64)
    assert len(rows) == 5 and len({tuple(r) for r in rows}) == 5


def test_two_equal_rows_of_the_data_are_two_rows_and_enough_data_gives_calib_samples(tiny_model, tmp_path, caplog):
    data = tmp_path / "twins.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS + ROWS[:1]))  # line 6 repeats line 1
    _, rows = calibrate(tiny_model, [str(data)], samples=64)
    assert len(rows) == 6
    caplog.clear()  # the call above said it has fewer rows (captured where an earlier test set tunesmith's level)
    with caplog.at_level(logging.INFO, logger="tunesmith"):
        _, rows = calibrate(tiny_model, [str(data)], samples=4)
    assert len(rows) == 4 and not [r for r in caplog.records if "calibrat" in r.getMessage()]


def test_a_bad_row_drawn_many_times_is_named_once(tiny_model, tmp_path):
    import pytest

    from tunesmith.errors import DataError

    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    with pytest.raises(DataError) as err:
        calibrate(tiny_model, [str(data)], samples=64)
    assert str(err.value).count("bad.jsonl:2:") == 1 and str(err.value).startswith("1 bad row(s)")
