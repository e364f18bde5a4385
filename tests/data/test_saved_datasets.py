"""A folder written by datasets' save_to_disk reads as that dataset (it was read as a folder of JSON files, blaming
dataset_info.json); a peer's `file:weight` on a local file is named as such."""

import datasets
import pytest

from tunesmith.data.load import load_rows
from tunesmith.errors import DataError

ROWS = [{"instruction": "Repeat", "input": w, "output": w} for w in ["a b", "c d", "e f"]]


def test_a_save_to_disk_folder_reads_as_its_rows(tmp_path):
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    data = load_rows([str(tmp_path / "ds")], kind="sft")
    assert not data.problems
    assert [r.messages[-1]["content"] for r in data.rows] == ["a b", "c d", "e f"]
    assert data.rows[1].line == "row 1"


def test_a_saved_dataset_dict_reads_its_train_split_or_names_the_splits(tmp_path):
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:2]),
                               "test": datasets.Dataset.from_list(ROWS[2:])})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert [r.messages[-1]["content"] for r in load_rows([str(tmp_path / "dd")], kind="sft").rows] == ["a b", "c d"]
    datasets.DatasetDict({"a": dd["train"], "b": dd["test"]}).save_to_disk(str(tmp_path / "ab"))
    with pytest.raises(DataError, match="splits a, b and no train; pass the split's folder"):
        load_rows([str(tmp_path / "ab")], kind="sft")
    assert len(load_rows([str(tmp_path / "ab" / "b")], kind="sft").rows) == 1


def test_a_split_suffix_on_a_local_file_is_named(tmp_path):
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "d.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    with pytest.raises(DataError, match=r"is a local file or folder, and `:0.5` would name a split of a hub dataset"):
        load_rows([f"{path}:0.5"], kind="sft")
