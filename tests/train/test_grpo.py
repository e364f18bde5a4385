"""GRPO's config: each --variant resolves to the intended TRL GRPOConfig (RLOOConfig) values, knobs override the
preset, and settings that do not fit the method are refused with the fix. No model is loaded."""

import pytest
import torch

from tunesmith.config import load
from tunesmith.config.rlhf import RLHFConfig
from tunesmith.errors import ConfigError
from tunesmith.train.grpo import grpo_args

KNOBS = ("loss_type", "scale_rewards", "beta", "epsilon", "epsilon_high", "importance_sampling_level",
         "mask_truncated_completions")


def trl_args(tmp_path, *flags, n_rewards=1):
    cfg = load(RLHFConfig, ["--method", "grpo", "--dataset", "x", "--reward-funcs", "length", *flags])
    return grpo_args(cfg, tmp_path, "cpu", torch.float32, has_eval=False, n_rewards=n_rewards)


@pytest.mark.parametrize("variant, expected", [
    ("grpo", ("grpo", "group", 0.04, 0.2, 0.2, "token", False)),
    ("dapo", ("dapo", "group", 0.0, 0.2, 0.28, "token", True)),
    ("dr_grpo", ("dr_grpo", "none", 0.0, 0.2, 0.2, "token", False)),
    ("gspo", ("grpo", "group", 0.0, 3e-4, 4e-4, "sequence", False)),
])
def test_each_variant_sets_trls_own_knobs(tmp_path, variant, expected):
    args = trl_args(tmp_path, "--variant", variant)
    assert type(args).__name__ == "GRPOConfig"
    assert tuple(getattr(args, k) for k in KNOBS) == expected
    assert (args.num_generations, args.per_device_train_batch_size, args.max_completion_length) == (8, 8, 256)


def test_rloo_is_trls_rloo_trainer_config_and_knobs_override_presets(tmp_path):
    rloo = trl_args(tmp_path, "--variant", "rloo")
    assert type(rloo).__name__ == "RLOOConfig" and (rloo.beta, rloo.epsilon) == (0.05, 0.2)
    args = trl_args(tmp_path, "--variant", "dapo", "--epsilon-high", "0.3", "--kl-coef", "0.01", "--grpo-loss-type", "bnpo",
                    "--num-generations", "4", "--batch-size", "2", "--grad-accum", "2", "--temperature", "0.7",
                    "--reward-weights", "2", "--reward-model", "rm", n_rewards=2)
    assert (args.epsilon_high, args.beta, args.loss_type, args.mask_truncated_completions) == (0.3, 0.01, "bnpo", True)
    assert (args.generation_batch_size, args.temperature, args.reward_weights) == (4, 0.7, [2.0, 1.0])


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "6"], "batch_size x grad_accum (6 x 1) must be a multiple of grpo.num_generations (8)"),
    (["--loss-type", "ipo"], "loss_type: a DPO setting; for grpo use grpo.loss_type"),
    (["--variant", "rloo", "--scale-rewards", "none"], "scale_rewards: not a knob of --variant rloo"),
    (["--reward-funcs", "format", "length", "--reward-weights", "1"], "rewards.weights: 1 weight(s) for the rewards (format, length)"),
    (["--format-pattern", "(unclosed"], "format_pattern: not a valid regular expression"),
])
def test_grpo_settings_that_cannot_work_are_refused(flags, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(RLHFConfig, ["--method", "grpo", "--dataset", "x", *flags])


def test_grpo_settings_are_refused_for_other_methods():
    with pytest.raises(ConfigError, match="num_generations: only used by --method grpo"):
        load(RLHFConfig, ["--method", "dpo", "--dataset", "x", "--num-generations", "4"])
    assert load(RLHFConfig, ["--method", "dpo", "--dataset", "x"]).batch_size == 4  # DPO's default is untouched
