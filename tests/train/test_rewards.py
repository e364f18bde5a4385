"""tunesmith/train/rewards: the built-in rewards' values, and how plugin rewards are loaded, called and checked."""

import json
from types import SimpleNamespace

import pytest

from tunesmith.config import load
from tunesmith.config.rlhf import RLHFConfig
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.train.rewards import RewardFn, build_rewards, load_plugins, register_reward
from tunesmith.train.rewards.builtin import answers_match, final_answer
from tunesmith.train.rewards.registry import ROW_KEY


def reward(name, *flags):
    cfg = load(RLHFConfig, ["--method", "grpo", "--dataset", "x", "--reward-funcs", name, *flags])
    return build_rewards(cfg)[0]


# -----------------------------------------------------------------------------
# Built-ins


def test_format_regex_must_match_the_whole_stripped_answer():
    fn = reward("format", "--format-pattern", r"<think>.*</think>\s*<answer>.*</answer>")
    good = "<think>\n2+2\n</think>\n<answer>4</answer>\n"
    assert fn(completions=[good, "<answer>4</answer>", good + " extra", ""]) == [1.0, 0.0, 0.0, 0.0]


def test_format_json_and_a_missing_pattern():
    fn = reward("format", "--format", "json")
    assert fn(completions=['{"a": [1, 2]}', " [1] ", "{'a': 1}", "```json\n{}\n```"]) == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="needs --rewards.format-pattern REGEX"):
        reward("format")


def test_length_aims_at_a_target_or_punishes_only_near_the_limit():
    target = reward("length", "--length-target", "10")
    ids = [[0] * n for n in (10, 5, 15, 0, 30)]
    assert target(completions=[""] * 5, completion_ids=ids) == [0.0, -0.5, -0.5, -1.0, -1.0]
    # DAPO's soft overlong punishment: max 100 tokens, the last 20 a linear ramp to -1
    overlong = reward("length", "--max-completion-length", "100")
    ids = [[0] * n for n in (10, 80, 90, 100)]
    assert overlong(completions=[""] * 4, completion_ids=ids) == [0.0, 0.0, -0.5, -1.0]


def test_repetition_penalises_repeated_ngrams():
    fn = reward("repetition", "--repetition-ngram", "2")
    assert fn(completions=["", "", ""], completion_ids=[[1, 2, 3, 4], [5, 5, 5, 5, 5], [7]]) == [0.0, -0.75, 0.0]


@pytest.mark.parametrize("completion, solution, expected", [
    ("The answer is 42.", "42", True),
    ("so we get \\boxed{\\frac{1}{2}} hmm... \\boxed{0.5}", "1/2", True),
    ("I count 3 apples, 4 pears, so 7", "7.0", True),
    ("Total: 1,234 dollars", "#### 1234", True),
    ("The answer is 41", "42", False),
    ("no number here", "42", False),
    ("Answer: Paris.", "paris", True),
    ("It is Paris, of course", "Paris", False),  # exact match: only the final answer, trimmed and case-folded
])
def test_accuracy_matches_numbers_numerically_and_text_exactly(completion, solution, expected):
    assert answers_match(completion, solution) is expected


def test_accuracy_skips_rows_without_a_solution_and_needs_the_column():
    fn = reward("accuracy")
    assert fn(completions=["4", "5", "x"], solution=["4", "4", None]) == [1.0, 0.0, None]
    with pytest.raises(ConfigError, match="built-in: reward accuracy needs the column.s. solution"):
        fn(completions=["4"], prompts=[[{"role": "user", "content": "2+2?"}]])
    assert final_answer("work... #### 12") == " 12"


# -----------------------------------------------------------------------------
# Plugins and the wrapper TRL calls


def test_a_reward_gets_text_and_only_the_columns_it_names():
    seen = {}

    def scored(texts, solution):
        seen.update(texts=texts, solution=solution)
        return [1, True, 0.5]

    fn = RewardFn("scored", scored)
    conversational = [[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}], "c"]
    out = fn(prompts=[[{"role": "user", "content": "q"}]] * 3, completions=conversational, solution=["1", "2", "3"],
             completion_ids=[[1], [2], [3]], trainer_state=None)
    assert out == [1.0, 1.0, 0.5] and seen == {"texts": ["a", "b", "c"], "solution": ["1", "2", "3"]}


def test_prompts_and_columns_come_from_the_row_not_the_arrow_table():
    seen = {}

    def spy(completions, **columns):
        seen.update(columns)
        return [0.0] * len(completions)

    conv = [{"role": "system", "content": "s"}, {"role": "user", "content": "q", "name": "ann"}]
    fn = RewardFn("spy", spy, rows=[(conv, {"solution": {"x": 1}}), (conv[1:], {})])
    arrow_prompts = [[{"role": "user", "content": "q", "name": None, ROW_KEY: i}] for i in (1, 0)]
    fn(prompts=arrow_prompts, completions=["a", "b"], completion_ids=[[1], [2]])
    assert seen["prompts"] == [conv[1:], conv] and seen["solution"] == [None, {"x": 1}]


def test_wrong_shapes_and_crashes_name_the_plugin_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.py").write_text(
        "from tunesmith import register_reward\n\n"
        "@register_reward('short_by_one')\ndef short_by_one(completions, **columns):\n"
        "    return [1.0] * (len(completions) - 1)\n\n"
        "@register_reward('crashes')\ndef crashes(completions, **columns):\n    return [len(c) / 0 for c in completions]\n")
    cfg = load(RLHFConfig, ["--method", "grpo", "--dataset", "x", "--plugin", "mine.py",
                            "--reward-funcs", "short_by_one", "crashes"])
    short, crashes = build_rewards(cfg)
    with pytest.raises(ConfigError, match=r"^mine.py:3: reward short_by_one returned 1 values for 2 completions"):
        short(completions=["a", "b"])
    with pytest.raises(TunesmithError, match=r"^mine.py:9: reward crashes raised ZeroDivisionError"):
        crashes(completions=["a"])


@pytest.mark.parametrize("source, expected", [
    ("x = [\n", "bad.py:1: syntax error"),
    ("import json\n\nDATA = json.loads('{oops')\n", "bad.py:3: JSONDecodeError"),
    ("from tunesmith import register_reward\n\n@register_reward('format')\ndef f(completions):\n    return []\n",
     "bad.py:3: reward 'format' is a built-in"),
    ("from tunesmith import register_reward\n\n@register_reward('nothing')\ndef f():\n    return []\n",
     "bad.py:3: reward 'nothing' must take the completions as its first argument"),
])
def test_a_broken_plugin_is_named_with_its_line(tmp_path, monkeypatch, source, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.py").write_text(source)
    with pytest.raises(ConfigError) as err:
        load_plugins(["bad.py"])
    assert str(err.value).startswith(expected)


def test_unknown_names_list_the_known_ones_and_register_reward_is_exported_lazily(tmp_path):
    import tunesmith

    assert tunesmith.register_reward is register_reward
    cfg = SimpleNamespace(rewards=SimpleNamespace(plugin=[], funcs=["lenght"]))
    with pytest.raises(ConfigError, match="unknown reward 'lenght'; did you mean length.*Known: accuracy, format, length"):
        build_rewards(cfg)


def test_importing_the_rewards_package_loads_no_torch():
    import subprocess
    import sys

    code = ("import json, sys, tunesmith; from tunesmith import register_reward; "
            "print(json.dumps(['torch' in sys.modules, 'trl' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [False, False]
