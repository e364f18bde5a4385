"""Where an export may be written: publishing replaces --output, so only an earlier export or an empty folder is
replaced by default, another folder with --overwrite, and never the folder holding the source or the current
directory (the outside tester's `--output RUN` deleted the run, `--output .` the current directory's files)."""

import json
import shutil

import pytest

from tunesmith import ExportConfig, export
from tunesmith import lineage as L
from tunesmith.config import load
from tunesmith.errors import ConfigError

FAST = {"greedy_prompts": 0, "eval_tokens": 16}


@pytest.fixture
def run(lora_run, tmp_path):
    """A copy of the run: a broken check deletes this, never the session's run."""
    return shutil.copytree(lora_run, tmp_path / "toy")


def files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_the_run_folder_and_its_final_are_refused_even_with_overwrite(run):
    before = files(run)
    for output in (run, run / "final", run.parent):
        for overwrite in (False, True):
            with pytest.raises(ConfigError, match=rf"output: {output} (is|holds) .*the source adapter.*--output "
                                                  rf"{run / 'merged'}"):
                export(ExportConfig(adapters=str(run / "final"), output=str(output), overwrite=overwrite, **FAST))
    assert files(run) == before


def test_the_current_directory_and_its_parents_are_refused(run, tmp_path, monkeypatch):
    here = tmp_path / "work"
    (here / "notes").mkdir(parents=True)
    (here / "notes/todo.txt").write_text("keep me")
    monkeypatch.chdir(here / "notes")
    for output in (".", "..", str(here)):
        with pytest.raises(ConfigError, match=rf"output: {output} (is|holds .*) the current directory"):
            export(ExportConfig(adapters=str(run / "final"), output=output, overwrite=True, **FAST))
    assert (here / "notes/todo.txt").read_text() == "keep me"


def test_a_folder_with_other_files_needs_overwrite(run, tmp_path):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    cfg = ["--adapters", str(run / "final"), "--output", str(other), "--greedy-prompts", "0", "--eval-tokens", "16"]
    with pytest.raises(ConfigError, match=rf"output: {other} already holds files .*'cat.jpg'.* --overwrite"):
        export(load(ExportConfig, cfg))
    assert (other / "cat.jpg").read_bytes() == b"\xff\xd8"

    out = export(load(ExportConfig, [*cfg, "--overwrite"]))
    assert out == other and not (other / "cat.jpg").exists() and (other / "model.safetensors").exists()


def test_an_earlier_export_or_an_empty_folder_is_replaced(run, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()  # empty: nothing to lose
    export(ExportConfig(adapters=str(run / "final"), output=str(out), **FAST))
    first = json.loads((out / L.LINEAGE_FILE).read_text())
    (out / "stale.txt").write_text("left by the first export's user")
    export(ExportConfig(adapters=str(run / "final"), output=str(out), merge_lora=False, **FAST))
    assert json.loads((out / L.LINEAGE_FILE).read_text()) != first  # the second export's record (its files), not
    # its "created" time, which has one-second resolution: two quick exports share it
    assert not (out / "stale.txt").exists() and (out / "adapter_model.safetensors").exists()
    assert not (out / "model.safetensors").exists()  # replaced whole, not merged into
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "toy"]  # no staging folder left behind
