"""rewards.plugin given something other than a working Python reward file: every case is a ConfigError naming the field,
the file (and line) and what to do, never a bare traceback. Python under any name (a web upload saved as .jsonl) loads."""

from types import SimpleNamespace

import pytest

from tunesmith.cli.main import main
from tunesmith.errors import ConfigError
from tunesmith.train.rewards import build_rewards, load_plugins

PLUGIN = ("from tunesmith import register_reward\n\n"
          "@register_reward({name!r})\ndef scored(completions, **columns):\n    return [1.0] * len(completions)\n")


def rewards_cfg(plugins, funcs):
    return SimpleNamespace(rewards=SimpleNamespace(plugin=plugins, funcs=funcs))


def refused(path: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_plugins([path])
    return str(err.value)


@pytest.mark.parametrize("name", ["my_rewards.jsonl", "my_rewards.txt", "my_rewards"])
def test_python_under_any_name_loads(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    reward = f"anyname_{name.replace('.', '_')}"
    (tmp_path / name).write_text(PLUGIN.format(name=reward))
    assert load_plugins([name]) == {name: [reward]}
    (fn,) = build_rewards(rewards_cfg([name], [reward]))
    assert fn(completions=["a", "b"]) == [1.0, 1.0] and fn.where == f"{name}:3"
    assert not (tmp_path / "__pycache__").exists()  # my_rewards.txt's cache would be named as my_rewards.py's


def test_a_dataset_given_as_the_plugin(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.jsonl").write_text('{"prompt": "2+2?", "solution": "4", "ok": true}\n')
    message = refused("data.jsonl")
    assert message.startswith("data.jsonl:1: NameError: name 'true' is not defined (while loading rewards.plugin data.jsonl")
    assert "data given to rewards.plugin by mistake?" in message
    # rows with no true/false/null are valid Python (dict displays): they run, and register nothing
    (tmp_path / "rows.jsonl").write_text('{"prompt": "2+2?", "solution": "4"}\n{"prompt": "3+3?", "solution": "6"}\n')
    message = refused("rows.jsonl")
    assert message.startswith("rewards.plugin: rows.jsonl registers no reward; decorate each reward function with "
                              "@register_reward")
    assert "rows.jsonl ends in .jsonl; is it your reward plugin" in message


@pytest.mark.parametrize("name, content, expected", [
    ("notes.txt", "Reward short answers.\nLonger ones get 0.\n",
     "notes.txt:1: syntax error: invalid syntax (rewards.plugin notes.txt must be Python source"),
    ("bad.py", "from tunesmith import register_reward\n\ndef f(completions\n    return []\n",
     "bad.py:3: syntax error: "),
    ("blob.bin", b"PK\x03\x04\x00\x00\xff", "blob.bin: syntax error: source code string cannot contain null bytes"),
    ("latin.py", b"x = '\xe9'\n", "latin.py:1: syntax error: (unicode error)"),
])
def test_text_that_is_not_python_names_the_file_and_line(tmp_path, monkeypatch, name, content, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    message = refused(name)
    assert message.startswith(expected) and f"rewards.plugin {name} must be Python source" in message


def test_a_folder_a_missing_file_and_a_file_that_registers_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rewards").mkdir()
    assert refused("rewards") == ("rewards.plugin: rewards is a folder; give the Python file in it that holds your "
                                  "@register_reward functions")
    assert refused("nope.py").startswith("rewards.plugin: nope.py: file not found; give the path of the Python file")
    (tmp_path / "helpers.py").write_text("def short(completions):\n    return [1.0] * len(completions)\n")
    message = refused("helpers.py")
    assert message.startswith("rewards.plugin: helpers.py registers no reward") and "Note:" not in message


@pytest.mark.parametrize("source, expected", [
    ("import os\n\nKEY = os.environ['TUNESMITH_NO_SUCH_VARIABLE']\n", "boom.py:3: KeyError: 'TUNESMITH_NO_SUCH_VARIABLE'"),
    ("import sys\n\nsys.exit('usage: boom.py FILE')\n", "boom.py:3: SystemExit: usage: boom.py FILE"),
])
def test_a_plugin_that_raises_on_import_names_the_file_line_and_exception(tmp_path, monkeypatch, source, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "boom.py").write_text(source)
    message = refused("boom.py")
    assert message.startswith(expected + " (while loading rewards.plugin boom.py: fix the plugin")


def test_a_home_relative_path_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "home_rewards.py").write_text(PLUGIN.format(name="from_home"))
    assert load_plugins(["~/home_rewards.py"]) == {"~/home_rewards.py": ["from_home"]}


def test_an_unknown_reward_lists_what_each_plugin_registers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.py").write_text(PLUGIN.format(name="listed_a"))
    (tmp_path / "b.txt").write_text(PLUGIN.format(name="listed_b"))
    for _ in range(2):  # the same files loaded again register the same names again
        with pytest.raises(ConfigError) as err:
            build_rewards(rewards_cfg(["a.py", "b.txt"], ["listed_c"]))
        message = str(err.value)
        assert message.startswith("rewards.funcs: unknown reward 'listed_c'; did you mean listed_")
        assert "listed_a" in message.split("Known: ")[1] and "listed_b" in message.split("Known: ")[1]
        assert message.endswith("(rewards.plugin a.py registers: listed_a; rewards.plugin b.txt registers: listed_b)")


def test_the_cli_prints_the_error_and_exits_2_without_a_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.jsonl").write_text('{"prompt": "2+2?", "solution": "4", "ok": true}\n')
    code = main(["rlhf", "--method", "grpo", "--model", "no-such-model", "--dataset", "data.jsonl",
                 "--rewards.plugin", "data.jsonl", "--rewards.funcs", "x", "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: data.jsonl:1: NameError") and "Traceback" not in err
