"""A run that stops on bad input before anything of it is written leaves no folder named after the time (each attempt
left runs/sft-<time>/ holding only train.log); a folder the user named stays."""

import pytest

from tunesmith.config import SFTConfig
from tunesmith.errors import DataError
from tunesmith.train.run import open_run


def test_a_generated_run_folder_is_removed_when_the_run_stops_before_writing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError):
        with open_run(SFTConfig(dataset=["missing.jsonl"])) as run:
            assert (run.dir / "train.log").exists()
            raise DataError("missing.jsonl: file not found")
    assert not list((tmp_path / "runs").glob("sft-*"))


def test_a_named_folder_or_one_with_a_config_stays(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError):
        with open_run(SFTConfig(dataset=["x"], output_dir="runs/mine")):
            raise DataError("bad row")
    assert (tmp_path / "runs" / "mine" / "train.log").exists()
    with pytest.raises(DataError):
        with open_run(SFTConfig(dataset=["x"])) as run:
            (run.dir / "config.yaml").write_text("model: x\n")  # the run had started: its folder tells what ran
            raise DataError("later")
    assert len(list((tmp_path / "runs").glob("sft-*"))) == 1
