"""GPTQ/AWQ calibration rows of an rlhf run: its recorded dataset read as the run's method read it (compress.run_kind),
rendered by its template. Before: every run's data was read as SFT chats, so a DPO, KTO or GRPO run's own data (the
default --calib-dataset) was refused as bad rows. On CPU: the sample builder only, not the quantization (GPU)."""

import json

import pytest
import yaml

from tunesmith.export import compress
from tunesmith.models.runs import read_run_output

PAIRS = [{"prompt": f"Name a colour {i}", "chosen": f"BLUE {i}", "rejected": f"no {i}"} for i in range(4)]
CONVERSATIONAL = [{side: [{"role": "user", "content": f"Say hi {i}"}, {"role": "assistant", "content": f"{word} {i}"}]
                   for side, word in (("chosen", "HI"), ("rejected", "bye"))} for i in range(2)]
KTO = [{"prompt": f"Spell cat {i}", "completion": f"C-A-T {i}", "label": i % 2 == 0} for i in range(4)]
GRPO = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(3)]


@pytest.fixture(scope="module")
def template(tiny_model):
    from tunesmith.templates import Template

    return Template.load(tiny_model)


def recorded_run(tmp_path, method, rows):
    """A run folder as `tunesmith rlhf` leaves it: config.yaml (method, dataset absolute) beside final/."""
    data = tmp_path / f"{method}.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "adapter_config.json").write_text("{}")
    config = {"model": "tiny", "method": method, "dataset": [str(data)], "_resolved": {"command": "rlhf"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return read_run_output(tmp_path / "final").config  # what export's Source.config holds


def texts(template, config, kind="run"):
    """The calibration rows decoded; kind "run" reads as the run's method, None as export/run.py calls it today."""
    kind = compress.run_kind(config) if kind == "run" else kind
    rows = compress.calibration(template, config["dataset"], samples=8, max_length=2048, seed=42, encoding="utf-8",
                                kind=kind)
    return {template.tokenizer.decode(r) for r in rows}


def rendered(template, rows, answer="chosen", asks=False):
    return {template.render_text([{"role": "user", "content": r.get("prompt", r.get("question"))}]
                                       + ([{"role": "assistant", "content": r[answer]}] if answer else []),
                                       add_generation_prompt=asks) for r in rows}


@pytest.mark.parametrize("kind", ["run", None])
def test_a_dpo_runs_own_data_calibrates_on_prompt_and_chosen_answer(template, tmp_path, kind):
    config = recorded_run(tmp_path, "dpo", PAIRS)
    got = texts(template, config, kind)
    assert got == rendered(template, PAIRS)  # every row, prompt + chosen, as training renders them
    assert all(f"BLUE {i}" in t and f"no {i}" not in t for i in range(4) for t in got if f"Name a colour {i}" in t)


def test_conversational_pairs_with_trls_implicit_prompt(template, tmp_path):
    config = recorded_run(tmp_path, "orpo", CONVERSATIONAL)
    assert texts(template, config) == {template.render_text(r["chosen"]) for r in CONVERSATIONAL}


def test_kto_rows_calibrate_on_prompt_and_completion_whatever_the_label(template, tmp_path):
    config = recorded_run(tmp_path, "kto", KTO)
    assert texts(template, config) == rendered(template, KTO, "completion")


def test_grpo_rows_calibrate_on_the_prompt_that_asks_for_the_answer(template, tmp_path):
    """A GRPO run trained on prompts (its answer column feeds the rewards): calibration sees the prompts as the
    rollouts render them, not question + answer as a chat."""
    config = recorded_run(tmp_path, "grpo", GRPO)
    got = texts(template, config)
    assert got == rendered(template, GRPO, answer=None, asks=True)
    assert texts(template, config, kind=None) == rendered(template, GRPO, "answer")  # unknown method: read as chats
    (tmp_path / "p").mkdir()
    prompt_only = recorded_run(tmp_path / "p", "ppo", [{"prompt": r["question"]} for r in GRPO])
    assert texts(template, prompt_only, kind=None) == got  # no chat in it: read as prompts


def test_run_kind_follows_the_recorded_method():
    assert [compress.run_kind(c) for c in (
        {"method": "dpo"}, {"method": "simpo"}, {"method": "rm"}, {"method": "kto"}, {"method": "grpo"},
        {"method": "lora"}, {}, {"_resolved": {"command": "pt"}})] == [
        "preference", "preference", "preference", "kto", "prompts", "sft", "sft", "pt"]


def test_a_bad_pair_in_a_dpo_runs_data_is_named(template, tmp_path):
    from tunesmith.errors import DataError

    config = recorded_run(tmp_path, "dpo", PAIRS + [{"prompt": "q", "chosen": "same", "rejected": "same"}])
    for kind in ("run", None):
        with pytest.raises(DataError, match=r"p?dpo.jsonl:5: rejected: identical to chosen"):
            texts(template, config, kind)
