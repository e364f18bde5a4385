"""--truncation error|drop|left|right keeps, cuts or drops exactly the rows expected, never loses an answer's ending
without counting it, and the counts land in config.yaml."""

import json

import pytest
import yaml

from tunesmith.config import PTConfig, SFTConfig
from tunesmith.config.rlhf import RLHFConfig
from tunesmith.data.rows import Preference, Text
from tunesmith.errors import DataError
from tunesmith.train.labels import trains_stop
from tunesmith.train.preflight import load_template
from tunesmith.train.sft import sft_data

MAX = 48
LONG = " ".join(["word"] * 60)


def chat(user, answer):
    return {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": user},
                         {"role": "assistant", "content": answer}]}


ROWS = [chat("hi", "one"), chat("yo", "two"), chat("hey", "three"),
        chat(LONG, "short answer"),  # line 4: the prompt is long; its answer sits beyond a right cut
        chat("q", LONG)]  # line 5: the answer is long; a right cut takes its end of turn


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tiny import make_tiny_model

    folder = tmp_path_factory.mktemp("trunc")
    model = make_tiny_model(folder / "tiny")
    data = folder / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    cfg = SFTConfig(model=str(model), dataset=[str(data)], max_length=MAX)
    template, _ = load_template(cfg)
    return model, data, template


def prepare(setup, mode):
    model, data, template = setup
    return sft_data(SFTConfig(model=str(model), dataset=[str(data)], max_length=MAX, truncation=mode), template)


def test_error_names_each_long_row(setup):
    with pytest.raises(DataError) as err:
        prepare(setup, "error")
    text = str(err.value)
    assert "2 bad row(s)" in text
    assert "rows.jsonl:4: messages: " in text and "rows.jsonl:5: messages: " in text and f"> max_length {MAX}" in text


def test_drop_leaves_out_exactly_the_long_rows(setup):
    data = prepare(setup, "drop")
    assert len(data.train) == 3
    assert data.record["truncation"] == {"mode": "drop", "max_length": MAX, "too_long": 2, "cut": 0, "dropped": 2,
                                         "lost_ending": 0}


def test_left_keeps_every_row_and_every_ending(setup):
    stop = set(setup[2].stop_token_ids)
    data = prepare(setup, "left")
    assert len(data.train) == 5
    assert all(len(ids) <= MAX for ids in data.train["input_ids"])
    assert all(trains_stop(labels, stop) for labels in data.train["labels"])
    assert data.record["truncation"]["cut"] == 2 and data.record["truncation"]["lost_ending"] == 0


def test_right_counts_and_names_the_rows_that_lost_their_ending(setup, caplog):
    stop = set(setup[2].stop_token_ids)
    with caplog.at_level("WARNING", logger="tunesmith"):
        data = prepare(setup, "right")
    # line 4's answer lies wholly beyond the cut: nothing left to train, left out; line 5 kept without its ending
    assert len(data.train) == 4
    assert data.record["truncation"] == {"mode": "right", "max_length": MAX, "too_long": 2, "cut": 1, "dropped": 1,
                                         "lost_ending": 1}
    assert [trains_stop(labels, stop) for labels in data.train["labels"]] == [True, True, True, False]
    assert "1 row(s) lost their answer's end-of-turn token" in caplog.text and "rows.jsonl:5" in caplog.text


def test_pairs_cut_the_prompt_left_and_the_answers_right(setup):
    from tunesmith.train.preference import render_pairs
    from tunesmith.train.truncate import Cuts

    template = setup[2]
    stop = set(template.stop_token_ids)
    rows = [Preference([{"role": "user", "content": LONG}], "yes", "no"),
            Preference([{"role": "user", "content": "q"}], LONG, "no")]
    left = Cuts("left", MAX, stop)
    ds = render_pairs(rows, template, MAX, [], cuts=left)
    assert len(ds) == 1 and left.dropped == 1  # the second pair's answer alone is longer than max_length
    whole = template.render_prompt(rows[0].prompt)
    assert ds[0]["prompt_ids"] == whole[-len(ds[0]["prompt_ids"]):]  # the prompt's start went, its end stays
    assert len(ds[0]["prompt_ids"]) + max(len(ds[0]["chosen_ids"]), len(ds[0]["rejected_ids"])) == MAX
    assert ds[0]["chosen_ids"][-1] in stop
    right = Cuts("right", MAX, stop)
    ds = render_pairs(rows, template, MAX, [], cuts=right)
    assert len(ds) == 1 and right.dropped == 1 and right.lost_ending == 1  # the first pair's prompt fills it all
    assert ds[0]["chosen_ids"][-1] not in stop and ds[0]["rejected_ids"][-1] in stop


def test_pt_splits_by_default_and_counts_a_lost_eos_on_the_right(setup):
    from tunesmith.train.tokenize import tokenize_pt
    from tunesmith.train.truncate import Cuts

    template = setup[2]
    rows = [Text("short text", "t.jsonl", 1), Text(LONG, "t.jsonl", 2)]
    assert PTConfig(dataset=["x"]).truncation == "split"
    split = tokenize_pt(rows, template, MAX)
    assert len(split) == 3 and sum(map(len, split["input_ids"])) > 60  # nothing lost
    right = Cuts("right", MAX, template.stop_token_ids)
    cut = tokenize_pt(rows, template, MAX, right, [])
    assert len(cut) == 2 and right.lost_ending == 1 and len(cut[1]["input_ids"]) == MAX
    problems = []
    assert len(tokenize_pt(rows, template, MAX, Cuts("error", MAX), problems)) == 1 and "t.jsonl:2: text" in str(problems[0])


def test_rollout_methods_refuse_cutting_prompts():
    with pytest.raises(ValueError, match="truncation: grpo renders each prompt again"):
        RLHFConfig(method="grpo", dataset=["x"], truncation="left")
    assert RLHFConfig(method="grpo", dataset=["x"], truncation="drop").truncation == "drop"


def test_counts_land_in_config_yaml(setup, tmp_path):
    from tunesmith import api

    model, data, _ = setup
    result = api.sft(SFTConfig(model=str(model), dataset=[str(data)], max_length=MAX, truncation="right", max_steps=1,
                               batch_size=2, output_dir=str(tmp_path / "run"), report_to=["none"]))
    resolved = yaml.safe_load((result.run_dir / "config.yaml").read_text())["_resolved"]
    assert resolved["truncation"]["lost_ending"] == 1 and resolved["truncation"]["dropped"] == 1
    assert resolved["train_rows"] == 4
