"""KTO, ORPO, CPO/SimPO and reward-model training: per-method config, the ids each trainer is given, the score head."""

import re

import pytest

from tunesmith.config import load, validate
from tunesmith.config.rlhf import RLHFConfig
from tunesmith.errors import ConfigError


def test_method_defaults_come_from_each_method():
    kto = RLHFConfig(method="kto", dataset=["x"])
    simpo = RLHFConfig(method="simpo", dataset=["x"])
    cpo = RLHFConfig(method="cpo", dataset=["x"])
    assert kto.kto.loss_type == "kto" and kto.kto.beta == 0.1
    assert (simpo.simpo.beta, simpo.simpo.alpha, simpo.simpo.gamma) == (2.0, 0.0, 1.0)
    assert (cpo.cpo.loss_type, cpo.cpo.beta, cpo.cpo.alpha, cpo.cpo.simpo_gamma) == ("sigmoid", 0.1, 1.0, None)
    tuned = RLHFConfig(method="simpo", dataset=["x"], simpo={"beta": 2.5, "alpha": 0.05})  # CPO-SimPO; gamma follows beta
    assert (tuned.simpo.beta, tuned.simpo.alpha, tuned.simpo.gamma) == (2.5, 0.05, 1.25)
    assert RLHFConfig(method="dpo", dataset=["x"]).dpo.loss_type == ["sigmoid"]


def test_flat_keys_of_earlier_releases_still_work_and_land_in_their_section(caplog):
    caplog.set_level("INFO", logger="tunesmith")
    flat = RLHFConfig(method="simpo", dataset=["x"], beta=2.5, cpo_alpha=0.05)
    assert (flat.simpo.beta, flat.simpo.alpha, flat.simpo.gamma) == (2.5, 0.05, 1.25)
    grpo = load(RLHFConfig, ["--method", "grpo", "--dataset", "x", "--num-generations", "4", "--reward-funcs", "length",
                             "--max-completion-length", "32", "--tuner", "qlora"])
    assert (grpo.grpo.num_generations, grpo.rewards.funcs, grpo.rollout.max_completion_length) == (4, ["length"], 32)
    assert grpo.batch_size == 4  # the group size, as before
    assert "note: num_generations is grpo.num_generations" in caplog.text
    with pytest.raises(ConfigError, match="beta: given twice, as beta and as dpo.beta; keep dpo.beta"):
        validate(RLHFConfig, {"method": "dpo", "dataset": ["x"], "beta": 0.2, "dpo": {"beta": 0.3}})
    with pytest.raises(ConfigError, match=re.escape("ppo: only read by --method ppo (method is dpo)")):
        load(RLHFConfig, ["--method", "dpo", "--dataset", "x", "--ppo.cliprange", "0.1"])


@pytest.mark.parametrize("flags, message", [
    (["--method", "orpo", "--loss-type", "hinge"], "loss_type: --method orpo has a single loss; drop loss_type"),
    (["--method", "cpo", "--cpo.loss-type", "kto"], "cpo.loss_type: kto is not a cpo loss; choose from sigmoid, hinge, ipo, simpo"),
    (["--method", "cpo", "--loss-type", "kto"], "loss_type: kto is not a cpo loss; choose from sigmoid, hinge, ipo, simpo"),
    (["--method", "dpo", "--loss-type", "simpo"], "loss_type: simpo is not a dpo loss"),
    (["--method", "simpo", "--loss-type", "sigmoid"], "loss_type: sigmoid is not a simpo loss; choose from simpo"),
    (["--method", "kto", "--batch-size", "1"], "batch_size: KTO estimates its KL term from the other rows"),
    (["--method", "dpo", "--cpo-alpha", "1"], "cpo_alpha: only used by --method cpo or simpo (method is dpo)"),
    (["--method", "orpo", "--desirable-weight", "2"], "desirable_weight: only used by --method kto (method is orpo)"),
    (["--method", "rm", "--beta", "0.2"], "beta: a reward model is trained without a reference model or beta"),
])
def test_settings_a_method_does_not_read_are_errors(flags, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(RLHFConfig, ["--dataset", "x", *flags])


@pytest.fixture(scope="module")
def template():
    from real_tokenizers import smollm2_tokenizer
    from tunesmith.templates import Template

    return Template(smollm2_tokenizer())


def test_kto_unpairs_a_pair_into_rendered_desirable_and_undesirable_rows(template):
    from tunesmith.data.rows import Preference, UnpairedPreference
    from tunesmith.train.kto import tokenize_unpaired

    prompt = [{"role": "user", "content": "code for apple"}]
    rows = [Preference(prompt, "CODE apple OK", "CODE apple NO"), UnpairedPreference(prompt, "CODE OK", True),
            UnpairedPreference(prompt, "word " * 40, False, "f.jsonl", 3)]
    problems = []
    ds = tokenize_unpaired(rows, template, max_length=50, problems=problems)
    assert ds["label"] == [True, False, True]
    assert all(p == template.render_prompt(prompt) for p in ds["prompt_ids"])  # the prompt infer and deploy send
    decode = template.tokenizer.decode
    assert [decode(c) for c in ds["completion_ids"]] == ["CODE apple OK<|im_end|>", "CODE apple NO<|im_end|>",
                                                         "CODE OK<|im_end|>"]
    assert [str(p) for p in problems] == [
        "f.jsonl:3: completion: 75 tokens > max_length 50; raise max_length or shorten the row"]


def test_one_length_check_and_one_message_for_every_method():
    """sft rows, pairs, kto rows, scored pairs, rl prompts and data check all report an over-long row the same way."""
    from tunesmith.data.rows import Conversation, Preference
    from tunesmith.train.tokenize import length_problem

    row = Conversation([], "d.jsonl", 7)
    assert length_problem(row, "messages", 10, 10) is None
    assert str(length_problem(row, "messages", 11, 10)) == (
        "d.jsonl:7: messages: 11 tokens > max_length 10; raise max_length or shorten the row")
    assert str(length_problem(Preference([], "", "", "p.jsonl", 2), "prompt", 8, 16, reserved=9)) == (
        "p.jsonl:2: prompt: 8 tokens + max_completion_length 9 > max_length 16; raise max_length, lower "
        "max_completion_length, or shorten the row")  # rl prompts: the answer's room is the user's choice too


def test_cpo_and_orpo_rows_score_only_the_answers(template):
    from tunesmith.data.rows import Preference
    from tunesmith.templates import IGNORE
    from tunesmith.train.preference import render_pairs, trl_pair_row

    pair = render_pairs([Preference([{"role": "user", "content": "q"}], "yes", "no")], template, 100, [])[0]
    row = trl_pair_row(pair)
    n = len(pair["prompt_ids"])
    assert row["prompt_input_ids"] == pair["prompt_ids"]
    for side in ("chosen", "rejected"):
        assert row[f"{side}_input_ids"] == pair["prompt_ids"] + pair[f"{side}_ids"]
        assert row[f"{side}_labels"] == [IGNORE] * n + pair[f"{side}_ids"]
        assert len(row[f"{side}_attention_mask"]) == len(row[f"{side}_input_ids"])


def test_reward_pairs_are_whole_rendered_conversations(template):
    from tunesmith.data.rows import Preference
    from tunesmith.train.rm import tokenize_scored_pairs

    prompt = [{"role": "user", "content": "q"}]
    ds = tokenize_scored_pairs([Preference(prompt, "yes", "no")], template, 100, [])
    # what TRL's GRPOTrainer renders for a reward model: the chat template over prompt + answer
    assert template.tokenizer.decode(ds["chosen_ids"][0]) == template.render_text(
        prompt + [{"role": "assistant", "content": "yes"}])


def test_reward_model_lora_trains_the_score_head_whole_and_freezes_the_base(tmp_path):
    from tiny import make_tiny_model
    from tunesmith.train.rm import load_scorer

    folder = make_tiny_model(tmp_path / "m")
    model, _, _ = load_scorer(RLHFConfig(method="rm", dataset=["x"], model=str(folder)), folder, pad_token_id=2)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert [n for n in trainable if "lora_" not in n] == ["base_model.model.score.modules_to_save.default.weight"]
    assert any("q_proj.lora_A" in n for n in trainable)
    assert model.config.num_labels == 1 and model.config.pad_token_id == 2
