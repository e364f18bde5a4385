"""Incremental retraining: --continue-from runs/A trains only on rows A never saw (by content, whatever the format),
mixes in --replay's share of old rows, starts from A's final weights, and records what it saw for the next round."""

import json
import math

import pytest
import yaml

from tunesmith import api
from tunesmith.config import SFTConfig
from tunesmith.errors import ConfigError, DataError
from tunesmith.train.preflight import load_template
from tunesmith.train.sft import sft_data
from tunesmith.data.load import load_rows
from tunesmith.train.continued import Continuation

OLD = [(f"code for {w}", f"CODE {w} OK") for w in ["apple", "river", "stone", "cloud", "maple", "tiger"]]
NEW = [(f"code for {w}", f"CODE {w} OK") for w in ["amber", "frost", "lemon", "orbit"]]


def messages(pairs):
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    from tiny import make_tiny_model

    folder = tmp_path_factory.mktemp("continue")
    model = make_tiny_model(folder / "tiny")
    data = write(folder / "round1.jsonl", messages(OLD))
    result = api.sft(SFTConfig(model=str(model), dataset=[str(data)], epochs=1, batch_size=len(OLD), learning_rate=1e-2,
                               warmup_ratio=0.0, output_dir=str(folder / "A"), report_to=["none"]))
    return model, result.run_dir, folder


def config(run_a, dataset, **kw):
    model, a_dir, _ = run_a
    return SFTConfig(model=str(model), dataset=[str(dataset)], continue_from=str(a_dir), seed=3, **kw)


def test_a_run_records_the_rows_it_saw(run_a):
    seen = json.loads((run_a[1] / "seen_rows.json").read_text())["rows"]
    assert len(seen) == len(OLD) == len(set(seen))


def test_seen_rows_are_skipped_by_content_and_replay_draws_its_share(run_a, tmp_path):
    # round 2: the old rows again, half of them as Alpaca rows (same conversation, other format), plus new ones
    alpaca = [{"instruction": q, "output": a} for q, a in OLD[:3]]
    data = write(tmp_path / "round2.jsonl", messages(OLD[3:] + NEW) + alpaca)
    cfg = config(run_a, data, replay=0.5)
    template, _ = load_template(cfg)
    prepared = sft_data(cfg, template)
    record = prepared.record["continued"]
    assert record["skipped_seen"] == len(OLD)  # the planted overlap, in either format
    assert record["new_rows"] == len(NEW)
    assert record["replayed"] == math.ceil(0.5 * len(NEW)) == 2
    assert len(prepared.train) == len(NEW) + 2
    answers = [template.tokenizer.decode([t for t in labels if t != -100]) for labels in prepared.train["labels"]]
    assert sum(any(f"CODE {w} OK" in a for w in ("amber", "frost", "lemon", "orbit")) for a in answers) == len(NEW)
    assert cfg.adapters == str(run_a[1] / "final")  # starts from A's adapter


def test_replay_reads_the_earlier_runs_dataset_when_the_new_one_holds_only_new_rows(run_a, tmp_path):
    data = write(tmp_path / "new-only.jsonl", messages(NEW))
    cfg = config(run_a, data, replay=1.0)
    prepared = sft_data(cfg, load_template(cfg)[0])
    assert prepared.record["continued"]["skipped_seen"] == 0
    assert prepared.record["continued"]["replayed"] == len(NEW)  # 4 of A's 6 rows, read from A's recorded dataset


def test_nothing_new_is_refused_and_replay_needs_a_parent(run_a, tmp_path):
    data = write(tmp_path / "same.jsonl", messages(OLD))
    cfg = config(run_a, data)
    with pytest.raises(DataError, match="all 6 rows were seen by"):
        sft_data(cfg, load_template(cfg)[0])
    with pytest.raises(ValueError, match="replay: .* needs --continue-from"):
        SFTConfig(dataset=["x"], replay=0.1)
    with pytest.raises(ConfigError, match="not a finished run"):
        load_template(SFTConfig(dataset=["x"], continue_from=str(tmp_path)))


def test_a_full_fine_tune_is_continued_from_its_model(tmp_path):
    from tunesmith.train.continued import start_from

    (tmp_path / "A" / "final").mkdir(parents=True)
    (tmp_path / "A" / "final" / "config.json").write_text("{}")
    cfg = SFTConfig(dataset=["x"], tuner="full", continue_from=str(tmp_path / "A"))
    start_from(cfg)
    assert cfg.model == str(tmp_path / "A" / "final") and cfg.adapters is None


def test_round_two_starts_from_round_ones_weights_and_extends_the_record(run_a, tmp_path):
    from safetensors.torch import load_file

    data = write(tmp_path / "round2.jsonl", messages(OLD + NEW))
    b_dir = tmp_path / "B"
    api.sft(config(run_a, data, epochs=1, batch_size=len(NEW), learning_rate=1e-12, output_dir=str(b_dir),
                   report_to=["none"]))
    a_weights = load_file(run_a[1] / "final" / "adapter_model.safetensors")
    b_weights = load_file(b_dir / "final" / "adapter_model.safetensors")
    lora_b = [k for k in a_weights if "lora_B" in k]
    assert lora_b and any(a_weights[k].abs().max() > 0 for k in lora_b)  # A trained them away from their zero init
    assert all((a_weights[k] - b_weights[k]).abs().max() < 1e-6 for k in a_weights)  # B began where A ended
    resolved = yaml.safe_load((b_dir / "config.yaml").read_text())
    assert resolved["continue_from"] == str(run_a[1]) and resolved["_resolved"]["continued"]["skipped_seen"] == 6
    assert len(json.loads((b_dir / "seen_rows.json").read_text())["rows"]) == len(OLD) + len(NEW)


def test_continue_from_takes_the_run_folder_however_it_is_spelled(run_a, monkeypatch):
    from tunesmith.train.continued import start_from

    monkeypatch.chdir(run_a[1].parent)
    for spelling in ("./A", "A/", "A/final"):
        cfg = SFTConfig(dataset=["x"], continue_from=spelling)
        start_from(cfg)  # ./A once failed the config's own check that the adapters lie inside continue_from
        assert (cfg.continue_from, cfg.adapters) == ("A", "A/final")


def test_a_run_stopped_mid_epoch_records_only_its_ancestors_rows(run_a, tmp_path):
    """max_steps ended B after 2 of its 4 new rows: which ones is not known, so none of B's count as seen; a run
    continuing from B skips A's rows and trains on all four again instead of skipping two it never saw."""
    data = write(tmp_path / "round2.jsonl", messages(OLD + NEW))
    b_dir = tmp_path / "B"
    api.sft(config(run_a, data, max_steps=1, batch_size=2, output_dir=str(b_dir), report_to=["none"]))
    record = json.loads((b_dir / "seen_rows.json").read_text())
    assert len(record["rows"]) == len(OLD) and record["stopped_at_epoch"] == 0.5
    chosen = Continuation.select(SFTConfig(model=str(run_a[0]), dataset=[str(data)], continue_from=str(b_dir)),
                                 load_rows([str(data)], kind="sft").rows, lambda names: load_rows(names, kind="sft"))
    assert len(chosen.rows) == len(NEW)
