"""`tunesmith rlhf --method ppo` through the console script: the reward from a plugin rises, and the run folder holds
the adapter and the value head."""

import json

import pytest

from e2e_cli import WORDS, assert_preflight_recorded, read_metrics, run_cli, run_main

PLUGIN = '''from tunesmith import register_reward


@register_reward("even_tokens")
def even_tokens(completions, completion_ids):
    """The share of the answer's tokens whose id is even: 0.5 for a random answer."""
    return [sum(i % 2 == 0 for i in ids) / max(len(ids), 1) for ids in completion_ids]
'''


@pytest.fixture(scope="module")
def peaked_model(tiny_model, tmp_path_factory):
    """The tiny model with an untied output layer of std 1: it samples among a few tokens per position (entropy
    ~2 nats instead of ~10.8 for the random model), so which tokens it prefers can be learned in a few steps."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("models") / "peaked"
    config = AutoConfig.from_pretrained(tiny_model)
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 1.0)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("ppo") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"code for {w}"}]}) + "\n"
                            for w in WORDS))
    plugin = path.with_name("rewards.py")
    plugin.write_text(PLUGIN)
    return path, plugin


def test_ppo_raises_the_reward_and_saves_adapter_and_value_head(peaked_model, prompts, tmp_path):
    data, plugin = prompts
    run = tmp_path / "ppo"
    run_cli("rlhf", "--method", "ppo", "--model", peaked_model, "--dataset", data, "--rewards.plugin", plugin,
            "--rewards.funcs", "even_tokens", "--rollout.max-completion-length", "6", "--batch-size", "32",
            "--ppo.num-mini-batches", "2", "--max-steps", "6", "--learning-rate", "5e-4", "--lr-scheduler", "constant",
            "--logging-steps", "1", "--output-dir", run, "--report-to", "none")
    logs = [m for m in read_metrics(run) if "reward" in m]
    rewards = [m["reward"] for m in logs]
    assert len(logs) == 6 and logs[0]["kl"] == 0.0  # the policy starts as the reference
    assert logs[0]["rewards/even_tokens/mean"] == rewards[0] and 0.3 < rewards[0] < 0.6
    assert sum(rewards[-3:]) / 3 > rewards[0] + 0.2, rewards
    assert all(m["kl"] > 0 for m in logs[1:])  # and moves away from it, which the KL penalty prices
    assert {"adapter_model.safetensors", "value_head.safetensors", "tunesmith_template.json"} <= {
        p.name for p in (run / "final").iterdir()}
    assert_preflight_recorded(run)


def test_ppo_refuses_full_weights_and_a_missing_reward(tiny_model, prompts, tmp_path):
    data, _ = prompts
    full = run_main("rlhf", "--method", "ppo", "--tuner", "full", "--model", tiny_model, "--dataset", data,
                    "--reward-funcs", "length", "--output-dir", tmp_path / "a", check=False)
    assert full.returncode == 2 and "base with the adapter switched off" in full.stderr
    none = run_main("rlhf", "--method", "ppo", "--model", tiny_model, "--dataset", data, "--output-dir", tmp_path / "b",
                    check=False)
    assert none.returncode == 2 and "ppo needs a reward" in none.stderr


def test_ppo_continuing_a_run_holds_to_that_run_not_the_base(peaked_model, prompts, tmp_path):
    """--adapters RUN/final (PPO after SFT): the reference is the adapter the run starts from (its first KL is 0), and final/ holds the
    trained adapter alone, not the reference copy."""
    data, plugin = prompts
    common = ("rlhf", "--method", "ppo", "--model", peaked_model, "--dataset", data, "--rewards.plugin", plugin,
              "--rewards.funcs", "even_tokens", "--rollout.max-completion-length", "6", "--batch-size", "8",
              "--learning-rate", "5e-3", "--lr-scheduler", "constant", "--logging-steps", "1", "--report-to", "none")
    run_main(*common, "--max-steps", "2", "--output-dir", tmp_path / "first")
    run_main(*common, "--max-steps", "1", "--adapters", tmp_path / "first" / "final", "--output-dir", tmp_path / "second")
    first = [m for m in read_metrics(tmp_path / "first") if "kl" in m]
    assert first[-1]["kl"] != 0.0  # the first run moved away from the base
    assert [m["kl"] for m in read_metrics(tmp_path / "second") if "kl" in m] == [0.0]
    assert not (tmp_path / "second" / "final" / "ref").exists()
