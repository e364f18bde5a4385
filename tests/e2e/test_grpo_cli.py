"""`tunesmith rlhf --method grpo` through the console script on the tiny random model (a yaml-configured run and
refusals through its main() in this process, run_main), plus the prompt ids TRL generates from (in process)."""

import json
import textwrap

import pytest
import yaml

from e2e_cli import WORDS, assert_preflight_recorded, read_metrics, run_cli, run_main

# On 2 shared cores a second OpenMP thread mostly spins waiting for the first: the tiny model's matmuls run several
# times faster on one thread.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}

PLUGIN = '''
from tunesmith import register_reward


@register_reward("says_ok")
def says_ok(completions, **columns):
    """The toy SFT answer ends with " OK": reward up to two of them."""
    return [min(c.count("OK"), 2) / 2 for c in completions]


@register_reward("names_word")
def names_word(completions, solution):
    return [1.0 if s in c else 0.0 for c, s in zip(completions, solution)]
'''


@pytest.fixture
def fresh_rewards(monkeypatch):
    """Plugins register their rewards in one registry per process: a run in this process starts from the built-ins
    alone, as a new `tunesmith` process does, and leaves nothing registered (nor its plugin module) to later tests.
    Calling it starts from the built-ins again."""
    import sys

    from tunesmith.train.rewards import registry

    def fresh():
        for name in ("_REGISTERED", "_LOG", "_SHOWN"):
            monkeypatch.setattr(registry, name, type(getattr(registry, name))())

    fresh()
    before = set(sys.modules)
    yield fresh
    for name in set(sys.modules) - before:
        if name.startswith("tunesmith_plugin_"):
            del sys.modules[name]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    """'code for X' prompts (what the toy SFT data answers with 'CODE X OK'), X also in a `solution` column."""
    folder = tmp_path_factory.mktemp("grpo")
    (folder / "prompts.jsonl").write_text("\n".join(json.dumps({"prompt": f"code for {w}", "solution": w}) for w in WORDS))
    (folder / "rewards.py").write_text(PLUGIN)
    return folder


def test_grpo_raises_the_mean_reward_of_a_plugin_reward(tiny_model, toy_data, prompts, tmp_path):
    # A random model almost never emits a given token, so every completion scores the same and GRPO has no signal:
    # a short full SFT on the toy data first gives a policy that sometimes says "OK" (reward ~0.4), as RL after SFT.
    # It only prepares the policy: in process. The GRPO run is the one through the console script.
    sft = tmp_path / "sft"
    run_main("sft", "--model", tiny_model, "--method", "full", "--dataset", f"{toy_data}#96", "--max-steps", "24",
             "--batch-size", "4", "--learning-rate", "1e-2", "--output-dir", sft, "--report-to", "none", env=ONE_THREAD)
    run = tmp_path / "grpo"
    run_cli("rlhf", "--method", "grpo", "--model", sft / "final", "--tuner", "full", "--dataset", prompts / "prompts.jsonl#96",
            "--plugin", prompts / "rewards.py", "--reward-funcs", "says_ok", "--max-steps", "16", "--batch-size", "16",
            "--max-completion-length", "8", "--learning-rate", "1e-3", "--lr-scheduler", "constant", "--warmup-ratio", "0",
            "--logging-steps", "1", "--output-dir", run, "--report-to", "none", cwd=tmp_path, env=ONE_THREAD)
    logs = [m for m in read_metrics(run) if "reward" in m]
    assert len(logs) == 16 and {"loss", "reward_std", "rewards/says_ok/mean", "kl", "completions/mean_length"} <= logs[0].keys()
    first = sum(m["reward"] for m in logs[:4]) / 4
    last = sum(m["reward"] for m in logs[-4:]) / 4
    assert last > first + 0.15, [round(m["reward"], 3) for m in logs]  # seeds 42, 1, 7: +0.37, +0.24, +0.37
    assert logs[0]["kl"] == 0.0 and logs[-1]["kl"] > 0  # variant grpo keeps DeepSeekMath's KL term (beta 0.04)
    assert (run / "final" / "model.safetensors").exists()
    assert_preflight_recorded(run)  # the reference copy of full weights and the rollouts are in its plan


def test_builtin_and_plugin_rewards_weighted_from_a_yaml_config(tiny_model, prompts, tmp_path, fresh_rewards):
    config = tmp_path / "grpo.yaml"
    config.write_text(textwrap.dedent(f"""\
        method: grpo
        model: {tiny_model}
        dataset: [{prompts / "prompts.jsonl"}]
        plugin: [{prompts / "rewards.py"}]
        reward_funcs: [names_word, length, repetition]
        reward_weights: [2.0, 0.5, 1.0]
        variant: dapo
        num_generations: 4
        max_completion_length: 6
        max_steps: 2
        logging_steps: 1
        report_to: [none]
        output_dir: {tmp_path / "run"}
        """))
    run_main("rlhf", "-c", config, env=ONE_THREAD)
    logs = [m for m in read_metrics(tmp_path / "run") if "reward" in m]
    means = [logs[0][f"rewards/{name}/mean"] for name in ("names_word", "length", "repetition")]
    assert logs[0]["reward"] == pytest.approx(2.0 * means[0] + 0.5 * means[1] + 1.0 * means[2], abs=1e-4)
    assert means[1] == -1.0  # a random model never stops within 6 tokens: DAPO's overlong punishment, in full
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["batch_size"] == 4 and resolved["_resolved"]["trl_knobs"]["epsilon_high"] == 0.28
    final = {p.name for p in (tmp_path / "run" / "final").iterdir()}
    assert {"adapter_model.safetensors", "tunesmith_template.json"} <= final and "ref" not in final


def test_broken_plugins_fail_before_any_weights_load(tiny_model, prompts, tmp_path, monkeypatch, fresh_rewards):
    (tmp_path / "syntax.py").write_text("from tunesmith import register_reward\n\n@register_reward('x')\n"
                                        "def x(completions)\n    return []\n")
    (tmp_path / "short.py").write_text("from tunesmith import register_reward\n\n@register_reward('short')\n"
                                       "def short(completions, **columns):\n    return [1.0]\n")
    common = ["rlhf", "--method", "grpo", "--model", tiny_model, "--dataset", prompts / "prompts.jsonl", "--report-to", "none"]
    cases = [(["--plugin", "syntax.py", "--reward-funcs", "x"], "error: syntax.py:4: syntax error"),
             (["--plugin", "short.py", "--reward-funcs", "short"],
              "error: short.py:3: reward short returned 1 values for 4 completions"),
             (["--plugin", "short.py", "--reward-funcs", "shrot"],
              "error: rewards.funcs: unknown reward 'shrot'; did you mean short? "
              "Known: accuracy, format, length, repetition, short")]
    monkeypatch.chdir(tmp_path)  # the plugins as typed, relative
    for i, (flags, expected) in enumerate(cases):
        fresh_rewards()  # each case a new process: what an earlier one registered is not known
        proc = run_main(*common, *flags, "--output-dir", tmp_path / f"run{i}", env=ONE_THREAD, check=False)
        assert proc.returncode == 2 and expected in proc.stderr, proc.stderr[-2000:]
        assert not (tmp_path / f"run{i}" / "config.yaml").exists()  # written only once weights are loaded


def test_the_prompt_ids_trl_generates_from_are_render_prompts(tiny_model, tmp_path, monkeypatch, fresh_rewards):
    """What the rollouts see is what `infer` and `deploy` send: Template.render_prompt of the row, system prompt and
    earlier turns included; and reward functions get the row's own conversation and columns."""
    from trl import GRPOTrainer
    from transformers import AutoTokenizer

    from tunesmith.config import load
    from tunesmith.config.rlhf import RLHFConfig
    from tunesmith.templates import Template
    from tunesmith.train.grpo import grpo
    from tunesmith.train.rewards import register_reward

    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                          {"role": "user", "content": "code for apple"}], "solution": {"word": "apple"}},
            {"prompt": "code for river", "solution": None, "level": 3}]
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    seen_ids, seen_columns = [], []
    original = GRPOTrainer._generate_single_turn

    def spy(self, prompt_ids, *args, **kwargs):
        seen_ids.extend(tuple(p) for p in prompt_ids)
        return original(self, prompt_ids, *args, **kwargs)

    @register_reward("spy_columns")
    def spy_columns(completions, prompts, solution, level):
        seen_columns.extend(zip(map(json.dumps, prompts), map(json.dumps, solution), level))
        return [0.0] * len(completions)

    monkeypatch.setattr(GRPOTrainer, "_generate_single_turn", spy)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = load(RLHFConfig, ["--method", "grpo", "--model", str(tiny_model), "--dataset", str(data), "--system", "Be brief.",
                            "--reward-funcs", "spy_columns", "--num-generations", "2", "--batch-size", "4",
                            "--max-completion-length", "2", "--max-steps", "1", "--report-to", "none",
                            "--output-dir", str(tmp_path / "run")])
    grpo(cfg)

    template = Template(AutoTokenizer.from_pretrained(tiny_model), default_system="Be brief.")
    expected = {tuple(template.render_prompt(rows[0]["messages"])),
                tuple(template.render_prompt([{"role": "user", "content": "code for river"}]))}
    assert set(seen_ids) == expected and len(seen_ids) == 4
    assert set(seen_columns) == {(json.dumps(rows[0]["messages"]), json.dumps({"word": "apple"}), None),
                                 (json.dumps([{"role": "user", "content": "code for river"}]), "null", 3)}
