"""The DAO drafter's chart step (examples/dao-proposal/make_charts.py): the shipped charts are what the seeded
generator draws, each series has the trend its row names, the answer states it and the proposal that follows, the
rows load as vision training data, and --score counts the trends an answer file names correctly."""

import importlib.util
import json
import random
from pathlib import Path

import pytest

from tunesmith.data.load import load_rows

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "dao-proposal"
spec = importlib.util.spec_from_file_location("dao_charts", EXAMPLE / "make_charts.py")
charts = importlib.util.module_from_spec(spec)
spec.loader.exec_module(charts)


def test_the_shipped_charts_are_the_seeded_generators(tmp_path):
    rows = charts.make("train", 8, charts.SEED, tmp_path)  # the first 8 of the shipped 200: the same draws
    shipped = (EXAMPLE / "charts" / "train.jsonl").read_text().splitlines()
    assert [json.dumps(r) for r in rows] == shipped[:8]
    for r in rows:
        assert (tmp_path / r["images"][0]).read_bytes() == (EXAMPLE / "charts" / r["images"][0]).read_bytes()
    heldout = [json.loads(line) for line in (EXAMPLE / "charts" / "heldout.jsonl").read_text().splitlines()]
    assert len(shipped) == 200 and len(heldout) == 40
    names = {r["messages"][0]["content"].split(" of ")[1].split(" over ")[0] for r in map(json.loads, shipped)}
    assert not names & {r["messages"][0]["content"].split(" of ")[1].split(" over ")[0] for r in heldout}


@pytest.mark.parametrize("trend", charts.TRENDS)
def test_each_series_has_its_trend_and_the_answer_follows_from_it(trend):
    rng = random.Random(7)
    for _ in range(50):
        values, facts = charts.series(trend, rng)
        first, last, median = facts["first_week"], facts["last_week"], facts["median"]
        if trend == "rising":
            assert last > 1.25 * first
        elif trend == "falling":
            assert last < 0.8 * first
        else:
            assert 0.85 < last / first < 1.15
        peak = max(values)
        assert (peak > 3.5 * median) == (trend == "spike")
        if trend == "spike":
            assert values[facts["spike_day"] - 1] == peak
        text = charts.answer(trend, "Onyx Moths", facts)
        assert charts.named_trend(text) == trend and "## Title" in text and "## Vote options" in text
    action = {"rising": "royalties to the community treasury", "falling": "holder incentive",
              "flat": "unchanged", "spike": "wash-trading review"}[trend]
    assert action in charts.answer(trend, "Onyx Moths", facts)


def test_rows_load_as_vision_training_data_with_their_images():
    data = load_rows([str(EXAMPLE / "charts" / "heldout.jsonl")], kind="sft")
    assert not data.problems and len(data.rows) == 40
    parts = data.rows[0].messages[0]["content"]
    assert parts[0]["type"] == "image" and Path(parts[0]["image"]).is_file()


def test_score_counts_trends_named_correctly(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"trend": t}) + "\n" for t in ("rising", "falling", "flat", "spike")))
    answers = tmp_path / "answers.jsonl"
    said = ["Trend: rising. Up.", "trend: Falling.", "Trend: rising.", "It spiked."]
    answers.write_text("".join(json.dumps({"response": s}) + "\n" for s in said))
    result = charts.score(answers, rows)
    assert result["named_correctly"] == 0.5
    assert result["per_trend"] == {"rising": 1.0, "falling": 1.0, "flat": 0.0, "spike": 0.0}
