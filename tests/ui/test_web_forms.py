"""The web UI's forms come from the configs: every option is there, and the command a form shows runs the config it
built (the CLI parses it back to the same thing)."""

import shlex

import pytest

from tunesmith.config import (
    DeployConfig,
    ExportConfig,
    PTConfig,
    SFTConfig,
    help_text,
    load,
    validate,
)
from tunesmith.config.eval import EvalConfig
from tunesmith.config.rlhf import RLHFConfig
from tunesmith.ui.web.forms import _parse, command_line, fields_of, shown


@pytest.mark.parametrize("cls", [SFTConfig, PTConfig, RLHFConfig, EvalConfig, ExportConfig, DeployConfig])
def test_every_option_of_help_is_a_field_of_the_form(cls):
    keys = {f.key for f in fields_of(cls)}
    listed = {line.split()[0][2:].replace("-", "_") for line in help_text(cls, "x").splitlines()
              if line.startswith("  --")}
    assert listed == {k.replace("-", "_") for k in keys}


@pytest.mark.parametrize("cls, command, values", [
    (SFTConfig, "sft", {"model": "models/tiny", "dataset": ["data/a.jsonl", "prd-assistant#20"], "tuner": "dora",
                        "lora": {"rank": 8, "targets": ["q_proj", "v_proj"]}, "packing": False, "max_steps": 30,
                        "learning_rate": 0.001, "gradient_checkpointing": True}),
    (RLHFConfig, "rlhf", {"method": "grpo", "dataset": ["p.jsonl"], "grpo": {"num_generations": 4, "use_vllm": False},
                          "rewards": {"funcs": ["format", "length"], "format_pattern": "A.*"}, "batch_size": 4}),
    (DeployConfig, "deploy", {"adapters": ["prd=runs/a/final"], "port": 8001, "api_key": "k"}),
    (SFTConfig, "sft", {"dataset": ["d.jsonl"], "gradient_checkpointing": "offload"}),
])
def test_the_command_a_form_shows_parses_back_to_its_config(cls, command, values):
    line = command_line(command, values)
    argv = shlex.split(line)[2:]
    assert load(cls, argv) == validate(cls, values)


@pytest.mark.parametrize("cls", [SFTConfig, PTConfig, RLHFConfig, EvalConfig, ExportConfig, DeployConfig])
def test_an_untouched_form_reads_back_as_the_defaults(cls):
    """What each input shows first parses back to its default, so a form nobody edited builds the default config (a
    mapping field once showed "{}", which read back as text and broke every preview)."""
    for f in fields_of(cls):
        assert _parse(f, shown(f)) == f.default or (_parse(f, shown(f)) in (None, "", []) and f.default in (None, "", [])), f.key


def test_a_switch_with_words_of_its_own_offers_them_and_reads_them_back():
    """gradient_checkpointing is true/false/unset or offload: the dropdown has all four and each reads back as the
    config takes it (plan's spells auto out; its fsdp has no unset but names the sharding modes)."""
    from tunesmith.config.plan import PlanConfig

    sft = next(f for f in fields_of(SFTConfig) if f.key == "gradient_checkpointing")
    assert sft.choices == ("auto", "true", "false", "offload")
    assert [_parse(sft, v) for v in sft.choices] == [None, True, False, "offload"]
    plan = {f.key: f for f in fields_of(PlanConfig)}
    assert [_parse(plan["gradient_checkpointing"], v) for v in ("auto", "offload")] == ["auto", "offload"]
    assert plan["fsdp"].choices == ("true", "false", "full-shard", "shard-grad-op", "hybrid-shard")
