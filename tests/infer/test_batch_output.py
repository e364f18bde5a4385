"""`tunesmith infer --dataset X --output X`: refused before any work, the prompts file left as it was. Before, the
answers were written over the prompts (the file is opened for writing once the rows are read)."""

import json
import os
import re

import pytest

from tunesmith import InferConfig, infer
from tunesmith.errors import ConfigError
from tunesmith.infer import batch

PROMPTS = "".join(json.dumps({"prompt": p, "solution": s}) + "\n" for p, s in (("Say hi", "hi"), ("2+2?", "4")))


@pytest.fixture
def no_engine(monkeypatch):
    """Loading a model is work: a refusal must come first."""
    def load_engine(*args, **kwargs):
        raise AssertionError("the engine was loaded before the output was checked")

    monkeypatch.setattr(batch.engines, "load_engine", load_engine)  # what infer's engine_for calls


@pytest.mark.parametrize("output", ["same", "dotted", "symlink", "hardlink", "in-folder"])
def test_an_output_that_is_an_input_file_is_refused_and_the_input_kept(tmp_path, monkeypatch, no_engine, output):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    prompts = tmp_path / "data" / "prompts.jsonl"
    prompts.write_text(PROMPTS)
    dataset, out = str(prompts), {"same": "data/prompts.jsonl", "dotted": "data/../data/./prompts.jsonl",
                                  "symlink": "link.jsonl", "hardlink": "hard.jsonl",
                                  "in-folder": "data/prompts.jsonl"}[output]
    if output == "symlink":
        (tmp_path / "link.jsonl").symlink_to(prompts)
    if output == "hardlink":
        os.link(prompts, tmp_path / "hard.jsonl")
    if output == "in-folder":
        dataset = "data#1"  # a folder of data files, one row drawn
    said = re.escape(f"output: --output {out} is {prompts}, which --dataset {dataset} reads: the answers would "
                     "overwrite the prompts; give another --output")
    with pytest.raises(ConfigError, match=f"^{said}"):
        infer(InferConfig(dataset=[dataset], output=out))
    assert prompts.read_text() == PROMPTS


def test_a_dataset_read_through_a_symlink_is_protected_too(tmp_path, no_engine):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(PROMPTS)
    (tmp_path / "link.jsonl").symlink_to(prompts)
    said = re.escape(f"--output {prompts} is {prompts}, which --dataset {tmp_path}/link")
    with pytest.raises(ConfigError, match=said):
        infer(InferConfig(dataset=[str(tmp_path / "link.jsonl")], output=str(prompts)))
    assert prompts.read_text() == PROMPTS


def test_another_output_is_written_and_the_input_kept(tmp_path):
    """The check refuses only a file the datasets read: a new file, or an old answers file, is written as before."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(PROMPTS)
    (tmp_path / "old.jsonl").write_text("{}\n")
    for out in (None, str(tmp_path / "new.jsonl"), str(tmp_path / "old.jsonl")):
        assert batch.output_path(InferConfig(dataset=[str(prompts)], output=out)) == \
            (tmp_path / ("prompts.answers.jsonl" if out is None else out))
    assert prompts.read_text() == PROMPTS
