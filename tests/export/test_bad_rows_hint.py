"""A bad row in data export reads names a fix export has. Before: the data loader's "or pass --skip-bad-rows to
leave them out" reached `tunesmith export`, which has no such option (outside user); now the error names
--calib-dataset (gptq/awq calibration) or --eval-dataset (the report's held-out data) instead."""

import json

import pytest

from tunesmith import ExportConfig, export
from tunesmith.errors import DataError
from tunesmith.export import compress

BAD = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
       {"messages": [{"role": "user", "content": "no answer"}]}]


@pytest.fixture
def bad_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in BAD) + "\n")
    return path


def test_a_bad_calibration_row_names_calib_dataset(tiny_model, bad_file, tmp_path, monkeypatch):
    monkeypatch.setattr(compress, "python", lambda: "python")  # the quant venv is not needed to read the rows
    cfg = ExportConfig(model=str(tiny_model), quant="gptq", group_size=32, calib_dataset=[str(bad_file)],
                       output=str(tmp_path / "out"), greedy_prompts=0, eval_tokens=16)
    with pytest.raises(DataError) as err:
        export(cfg)
    message = str(err.value)
    assert "bad.jsonl:2: messages:" in message
    assert message.endswith("Fix these rows, or pass --calib-dataset FILE.")
    assert "skip-bad-rows" not in message


def test_a_bad_eval_row_names_eval_dataset(tiny_model, bad_file, tmp_path):
    cfg = ExportConfig(model=str(tiny_model), eval_dataset=[str(bad_file)], output=str(tmp_path / "out"),
                       greedy_prompts=0, eval_tokens=16)
    with pytest.raises(DataError, match=r"bad.jsonl:2: messages:") as err:
        export(cfg)
    assert str(err.value).endswith("Fix these rows, or pass another --eval-dataset FILE.")
    assert "skip-bad-rows" not in str(err.value)
