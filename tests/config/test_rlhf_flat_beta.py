"""TRL users write GRPO's KL coefficient as `beta`, flat (`beta: 0.04`) or in the section (`grpo: {beta: 0.04}`);
tunesmith calls it grpo.kl_coef (TRL's GRPOConfig.beta). Before: flat `beta` with --method grpo was refused as "a
DPO setting", and `grpo: {beta: ...}` as an unknown option; now both are grpo.kl_coef, as flat `beta` is dpo.beta
for dpo. PPO's coefficient has no TRL name `beta`: refused there, naming ppo.kl_coef."""

import logging

import pytest

from tunesmith.config import load
from tunesmith.config.rlhf import RLHFConfig
from tunesmith.errors import ConfigError


def from_yaml(tmp_path, text):
    path = tmp_path / "rlhf.yaml"
    path.write_text("dataset: [x.jsonl]\n" + text)
    return load(RLHFConfig, ["-c", str(path)])


def test_flat_beta_is_grpos_kl_coef_with_a_note(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tunesmith")
    cfg = from_yaml(tmp_path, "method: grpo\nbeta: 0.04\n")
    assert cfg.grpo.kl_coef == 0.04 and cfg.dpo.beta == 0.1
    assert "note: beta is grpo.kl_coef in tunesmith" in caplog.text
    assert load(RLHFConfig, ["--method", "grpo", "--dataset", "x", "--beta", "0.02"]).grpo.kl_coef == 0.02


def test_trls_name_inside_the_grpo_section(tmp_path):
    assert from_yaml(tmp_path, "method: grpo\ngrpo: {beta: 0.04, num_generations: 4}\n").grpo.kl_coef == 0.04
    assert load(RLHFConfig, ["--method", "grpo", "--dataset", "x", "--grpo.beta", "0.03"]).grpo.kl_coef == 0.03
    with pytest.raises(ConfigError, match="unknown option --grpo.betta"):  # a section's other unknown keys still fail
        load(RLHFConfig, ["--method", "grpo", "--dataset", "x", "--grpo.betta", "0.03"])


def test_flat_beta_still_reads_as_each_methods_own_beta(tmp_path):
    assert from_yaml(tmp_path, "method: dpo\nbeta: 0.3\n").dpo.beta == 0.3
    assert from_yaml(tmp_path, "method: kto\nbeta: 0.3\n").kto.beta == 0.3


@pytest.mark.parametrize("text, message", [
    ("method: grpo\nbeta: 0.04\ngrpo: {kl_coef: 0.1}\n",
     "beta: given twice, as beta and as grpo.kl_coef; keep grpo.kl_coef"),
    ("method: ppo\nbeta: 0.04\n", "beta: a DPO setting; for ppo use ppo.kl_coef"),
    ("method: rm\nbeta: 0.04\n", "beta: a reward model is trained without a reference model or beta; drop beta"),
])
def test_beta_where_it_cannot_be_read_is_refused_with_the_fix(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        from_yaml(tmp_path, text)
