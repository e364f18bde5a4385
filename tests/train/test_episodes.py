"""tunesmith/train/episodes.py: environment files are checked with file:line errors before weights load, and an
episode becomes one GRPO sample whose trained tokens are exactly what SFT would train for the same conversation."""

import json
import re
from types import SimpleNamespace

import pytest

from real_tokenizers import llama3_style_tokenizer, qwen_tokenizer, smollm2_tokenizer
from tunesmith.config.rlhf import RLHFConfig
from tunesmith.errors import ConfigError, DataError
from tunesmith.templates import IGNORE, Template
from tunesmith.train import episodes

COUNTER = '''
class Counter:
    """Say the next number; three right answers end the episode."""

    def reset(self, row):
        self.n = row["start"]
        self.right = 0
        return f"Count up from {self.n}. Say the next number."

    def step(self, action):
        ok = action.strip() == str(self.n + 1)
        self.n += ok
        self.right += ok
        return (f"{'Yes' if ok else 'No'}, now say {self.n + 1}.", 1.0 if ok else -1.0, self.right == 3)
'''


def write(tmp_path, source, name="env.py"):
    path = tmp_path / name
    path.write_text(source)
    return path


@pytest.mark.parametrize("source, spec_tail, expected", [
    ("class Counter:\n    def reset(self, row)\n        return 'x'\n", ":Counter", "env.py:2: syntax error"),
    ("import os\nVALUE = 1 / 0\n", ":Counter", "env.py:2: ZeroDivisionError: division by zero (while importing"),
    (COUNTER, ":Countr", "env.py: no class Countr; classes defined there: Counter"),
    ("class Counter:\n    def reset(self, row):\n        return 'x'\n", ":Counter", "env.py:1: Counter has no step()"),
    ("class Counter:\n    def reset(self):\n        return 'x'\n    def step(self, a):\n        pass\n", ":Counter",
     "env.py:2: Counter.reset must take one argument (row)"),
    ("class Counter:\n    def __init__(self, size):\n        pass\n" + COUNTER.split("class Counter:")[1], ":Counter",
     "env.py:1: Counter() must be callable with no arguments"),
])
def test_a_broken_environment_file_is_named_with_its_line(tmp_path, source, spec_tail, expected):
    path = write(tmp_path, source)
    with pytest.raises(ConfigError) as err:
        episodes.load_env(f"{path}{spec_tail}")
    assert expected in str(err.value).replace(str(tmp_path) + "/", "")


def test_reset_and_step_are_checked_on_every_row_before_training(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"start": 1}\n{"begin": 5}\n')
    cls = episodes.load_env(f"{write(tmp_path, COUNTER)}:Counter")
    with pytest.raises(DataError) as err:  # row 2 lacks "start": the error names the row and the env line
        episodes.check_env(cls, episodes.read_rows([str(rows)], seed=0))
    message = str(err.value).replace(str(tmp_path) + "/", "")
    assert message.startswith("env.py:6: Counter.reset raised KeyError: 'start' (row rows.jsonl:2)")
    bad_step = COUNTER.replace("self.right == 3)", "self.right == 3, 'extra')")
    cls = episodes.load_env(f"{write(tmp_path, bad_step, 'env2.py')}:Counter")
    rows.write_text('{"start": 1}\n')
    with pytest.raises(DataError) as err:
        episodes.check_env(cls, episodes.read_rows([str(rows)], seed=0))
    assert "env2.py:10: Counter.step returned ('No, now say 2.', -1.0, False, 'extra')" in str(err.value)
    assert "it must return (observation: str, reward: float, done: bool)" in str(err.value)


class ScriptedTrainer:
    """Stands in for GRPOTrainer in the rollout: each episode answers with its next scripted action, encoded the way
    the template encodes an answer (text + end-of-turn token), or cut at the turn's token limit."""

    def __init__(self, tokenizer, scripts, end, budget=1024):
        self.tokenizer, self.scripts, self.end = tokenizer, [list(s) for s in scripts], end
        self.max_completion_length = budget
        self.generation_config = SimpleNamespace(max_new_tokens=budget)
        self.generation_kwargs = {"max_new_tokens": budget}
        self.seen, self.limits = [None] * len(scripts), []

    def _generate_single_turn(self, prompt_ids, images, fields, num_generations):
        self.limits.append((self.generation_config.max_new_tokens, self.generation_kwargs["max_new_tokens"]))
        out, taken = [], set()
        for ids in prompt_ids:  # which episode: the first one not yet served whose last input this one extends
            j = next(j for j, s in enumerate(self.seen) if j not in taken and (s is None or ids[: len(s)] == s))
            self.seen[j], _ = ids, taken.add(j)
            text = self.scripts[j].pop(0)
            out.append(self.tokenizer(text + self.end, add_special_tokens=False)["input_ids"][: self.limits[-1][0]])
        return out, None


FAMILIES = {"smollm2": (smollm2_tokenizer, "<|im_end|>"), "qwen2.5-chatml": (qwen_tokenizer, "<|im_end|>"),
            "llama3-style": (llama3_style_tokenizer, "<|eot_id|>")}


@pytest.fixture(scope="module")
def counter(tmp_path_factory):
    folder = tmp_path_factory.mktemp("counter")
    rows = folder / "rows.jsonl"
    rows.write_text(json.dumps({"start": 4}) + "\n")
    return f"{write(folder, COUNTER)}:Counter", str(rows)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_trained_tokens_are_exactly_what_sft_would_train_on_the_same_conversation(family, counter):
    make, end = FAMILIES[family]
    template = Template(make(), default_system="You count.")
    spec, rows = counter
    cfg = RLHFConfig(method="grpo", dataset=[rows], seed=0, max_length=2048, rollout={"max_completion_length": 512},
                     grpo={"env": spec, "max_turns": 6})
    run = episodes.rollout_func_for(cfg, template)
    actions = ["5", "seven", "6", "7"]
    trainer = ScriptedTrainer(template.tokenizer, [actions], end)
    out = run.rollout_func([run.train_dataset[0]["prompt"]], trainer)
    assert out["env_done"] == [True] and out["env_turns"] == [4] and out["env_reward"] == [2.0]
    # The same conversation as SFT data: its ids and loss mask, up to the last answer's end-of-turn token.
    conv = [{"role": "user", "content": "Count up from 4. Say the next number."}]
    said = ["Yes, now say 6.", "No, now say 6.", "Yes, now say 7."]
    for action, observation in zip(actions, said + [None]):
        conv.append({"role": "assistant", "content": action})
        if observation:
            conv.append({"role": "user", "content": observation})
    ids, labels = template.render(conv)
    sequence = out["prompt_ids"][0] + out["completion_ids"][0]
    assert ids[: len(sequence)] == sequence
    assert template.tokenizer.decode(ids[len(sequence):]).strip() == ""  # only the template's trailing newline
    assert out["prompt_ids"][0] == template.render_prompt(conv[:1])
    mask = [0] * len(out["prompt_ids"][0]) + out["env_mask"][0]
    assert mask == [int(label != IGNORE) for label in labels[: len(sequence)]]


def test_turn_limit_budget_and_max_turns_end_episodes(counter):
    template = Template(smollm2_tokenizer())
    spec, rows = counter
    prompt = None

    def rollout(scripts, max_turns, budget, turn_tokens=None):
        nonlocal prompt
        cfg = RLHFConfig(method="grpo", dataset=[rows], seed=0, max_length=2048, rollout={"max_completion_length": 512},
                     grpo={"env": spec, "max_turns": max_turns, "max_turn_tokens": turn_tokens})
        run = episodes.rollout_func_for(cfg, template)
        prompt = run.train_dataset[0]["prompt"]
        trainer = ScriptedTrainer(template.tokenizer, scripts, "<|im_end|>", budget=budget)
        return run.rollout_func([prompt] * len(scripts), trainer), trainer

    out, _ = rollout([["no"] * 5, ["5", "6", "7"]], max_turns=2, budget=1024)
    assert out["env_turns"] == [2, 2] and out["env_done"] == [False, False] and out["env_reward"] == [-2.0, 2.0]
    out, trainer = rollout([["5 " * 40, "5", "6"]], max_turns=3, budget=1024, turn_tokens=8)
    assert trainer.limits == [(8, 8), (8, 8), (8, 8)] and trainer.generation_config.max_new_tokens == 1024
    first_turn = out["completion_ids"][0][: out["env_mask"][0].index(0)]
    assert len(first_turn) == 8  # cut at the turn limit; the end-of-turn token is added, untrained
    assert template.tokenizer.decode(out["completion_ids"][0][8]) == "<|im_end|>" and out["env_mask"][0][8] == 0
    out, _ = rollout([["no", "no", "no"]], max_turns=3, budget=20)  # the observation would pass the budget
    assert out["env_turns"] == [2] and len(out["completion_ids"][0]) <= 20


def test_a_first_observation_too_long_for_max_length_is_named_by_row(counter):
    spec, rows = counter
    cfg = RLHFConfig(method="grpo", dataset=[rows], seed=0, max_length=520, rollout={"max_completion_length": 512},
                     grpo={"env": spec, "max_turns": 2})
    with pytest.raises(DataError) as err:
        episodes.rollout_func_for(cfg, Template(smollm2_tokenizer()))
    # the first observation is what reset() returned; the one length message of every method
    assert re.search(r"rows.jsonl:1: reset\(\): \d+ tokens \+ max_completion_length 512 > max_length 520; raise max_length",
                     str(err.value))
