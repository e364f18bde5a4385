"""What users bring from LLaMA-Factory, axolotl and HF TrainingArguments files: `lora_target: all`, keys with no
rename of ours (bf16, stage), a key written twice; and `tunesmith --version` through the console script."""

import logging
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from pydantic import ValidationError

from tunesmith.config import PlanConfig, SFTConfig, load, read_yaml
from tunesmith.config.rlhf import RLHFConfig
from tunesmith.errors import ConfigError


def write(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "peer.yaml"
    path.write_text("\n".join(["model: smollm2-135m-instruct", "dataset: [data/a.jsonl]", *lines]) + "\n")
    return str(path)


# -----------------------------------------------------------------------------
# lora.targets: all


@pytest.mark.parametrize("given", [["--lora.targets", "all"], ["--lora.targets", "ALL"], ["--lora_target", "all"],
                                   ["--lora.targets", "all-linear"]])
def test_all_as_a_flag_is_peft_all_linear(given):
    assert load(SFTConfig, ["--dataset", "x", *given]).lora.targets == "all-linear"


def test_all_in_a_file_and_in_python_is_peft_all_linear(tmp_path):
    """LLaMA-Factory's `lora_target: all` reached peft (and the memory plan) as a module named "all"."""
    assert load(SFTConfig, ["-c", write(tmp_path, "lora_target: all")]).lora.targets == "all-linear"
    assert load(SFTConfig, ["-c", write(tmp_path, "lora: {targets: [all]}")]).lora.targets == "all-linear"
    assert SFTConfig(dataset=["d"], lora={"targets": "all"}).lora.targets == "all-linear"
    assert RLHFConfig(method="dpo", dataset=["d"], lora_target="all").lora.targets == "all-linear"
    assert load(SFTConfig, ["--dataset", "x", "--lora.targets", "q_proj,v_proj"]).lora.targets == ["q_proj", "v_proj"]


def test_all_beside_module_names_is_refused():
    with pytest.raises(ConfigError, match=r"lora.targets: all names every linear layer; give it alone, or list module "
                                          r"names only \(got \['all', 'q_proj'\]\)"):
        load(SFTConfig, ["--dataset", "x", "--lora.targets", "all", "q_proj"])


# -----------------------------------------------------------------------------
# Peers' keys


HINTS = {  # key: value -> what the error says after "unknown option KEY; "
    "stage: sft": "LLaMA-Factory's stage is the command in tunesmith (stage sft = `tunesmith sft`); drop the key",
    "stage: dpo": "LLaMA-Factory's stage is the command in tunesmith (stage dpo = `tunesmith rlhf --method dpo`); drop "
                  "the key",
    "do_train: true": "not needed: a training command always trains; drop the key",
    "template: qwen": "tunesmith renders with the model's own chat template (its tokenizer's, saved with the run), and "
                      "has no key to pick another: drop it (variables for the template: chat_template_kwargs)",
    "max_samples: 1000": "N rows of a dataset are NAME#N in dataset (drawn with the seed), e.g. dataset: "
                         "[data.jsonl#1000] (--dataset data.jsonl#1000)",
    "bf16: true": "bf16: true is dtype: bfloat16 in tunesmith (--dtype bfloat16)",
    "fp16: true": "fp16: true is dtype: float16 in tunesmith (--dtype float16)",
    "bf16: false": "drop it: dtype: auto (the default) picks bfloat16 on GPUs that have it, else float32; dtype: "
                   "float32 asks for full precision",
    "adapter: qlora": "axolotl's adapter (lora, qlora) is tuner in tunesmith: tuner: qlora (--tuner qlora); adapters "
                      "is a trained adapter folder to start from",
}


@pytest.mark.parametrize("line", HINTS)
def test_a_peers_key_with_no_rename_says_what_to_write(line, tmp_path):
    """Before: `stage` suggested system (or plan's zero_stage), `do_train` node_rank, `template` eval_gate,
    `max_samples` max_steps, `fp16` fsdp, and `bf16` nothing."""
    key = line.split(":")[0]
    with pytest.raises(ConfigError) as err:
        load(SFTConfig, ["-c", write(tmp_path, "epochs: 1", line)])
    assert str(err.value) == f"{tmp_path / 'peer.yaml'}:4: unknown option {key}; {HINTS[line]}"


def test_the_hints_name_keys_the_command_has():
    from tunesmith.config.load import PEER_HINTS, resolves

    for key, (ours, _) in PEER_HINTS.items():
        assert ours is None or resolves(SFTConfig, ours), key
    assert resolves(SFTConfig, "dtype") and "bfloat16" in str(SFTConfig.model_fields["dtype"].annotation)
    assert resolves(SFTConfig, "overwrite") and resolves(SFTConfig, "lr_scheduler")


def test_the_hints_reach_flags_python_and_other_commands(tmp_path):
    with pytest.raises(ConfigError, match=r"^unknown option --bf16; bf16: true is dtype: bfloat16 in tunesmith"):
        load(SFTConfig, ["--dataset", "x", "--bf16"])
    with pytest.raises(ConfigError, match=r"unknown option --stage; .*stage dpo = `tunesmith rlhf --method dpo`"):
        load(RLHFConfig, ["--method", "dpo", "--dataset", "x", "--stage", "dpo"])
    with pytest.raises(ConfigError, match=r"peer.yaml:3: unknown option fp16; fp16: true is dtype: float16"):
        load(PlanConfig, ["-c", write(tmp_path, "fp16: true")])
    with pytest.raises(ValidationError, match="bf16: unknown option; bf16: true is dtype: bfloat16 in tunesmith"):
        SFTConfig(dataset=["d"], bf16=True)
    # a folder under axolotl's `adapter`: the nearest key, adapters, is the right suggestion
    with pytest.raises(ConfigError, match=r"unknown option adapter; did you mean adapters\?"):
        load(SFTConfig, ["-c", write(tmp_path, "adapter: runs/a/final")])


def test_renamed_peer_keys_are_taken_with_a_note(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tunesmith")
    cfg = load(SFTConfig, ["-c", write(tmp_path, "lr_scheduler_type: linear", "overwrite_output_dir: true",
                                       "per_device_train_batch_size: 2", "gradient_accumulation_steps: 8",
                                       "num_train_epochs: 2", "cutoff_len: 1024")])
    assert (cfg.lr_scheduler, cfg.overwrite, cfg.batch_size, cfg.grad_accum, cfg.epochs, cfg.max_length) == (
        "linear", True, 2, 8, 2.0, 1024)
    assert "note: lr_scheduler_type is called lr_scheduler in tunesmith" in caplog.messages
    assert "note: overwrite_output_dir is called overwrite in tunesmith" in caplog.messages
    for peer in ("sequence_len", "max_seq_length"):
        assert load(SFTConfig, ["-c", write(tmp_path, f"{peer}: 512")]).max_length == 512


# -----------------------------------------------------------------------------
# A key written twice


def test_a_key_given_twice_names_the_second_line_and_the_key(tmp_path):
    """Before: last-wins, silently (learning_rate 3e-4, lora.rank 4 here)."""
    path = write(tmp_path, "learning_rate: 1e-4", "lora:", "  rank: 8", "  alpha: 16", "  rank: 4")
    with pytest.raises(ConfigError) as err:
        load(SFTConfig, ["-c", path])
    assert str(err.value) == (f"{path}:7: lora.rank: given twice in one mapping (first on line 5); YAML would silently "
                              "keep the last: keep one")
    path = write(tmp_path, "learning_rate: 1e-4", "epochs: 1", "learning_rate: 3e-4")
    with pytest.raises(ConfigError, match=r"peer.yaml:5: learning_rate: given twice in one mapping \(first on line 3"):
        load(SFTConfig, ["-c", path])


def test_a_merge_overridden_by_the_mappings_own_key_is_no_duplicate(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("small: &small {rank: 8, alpha: 16}\nlora:\n  <<: *small\n  rank: 4\n")
    values, lines = read_yaml(path)
    assert values["lora"] == {"rank": 4, "alpha": 16} and lines["lora.rank"] == 4


# -----------------------------------------------------------------------------
# tunesmith --version (the console script, as users run it)


def test_version_through_the_console_script():
    script = Path(sys.executable).parent / "tunesmith"
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"tunesmith {metadata.version('tunesmith')}\n", "")
    listed = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "  --version    print tunesmith's version and exit" in listed.stdout


# -----------------------------------------------------------------------------
# lora alpha follows rank; warmup_steps, val_set_size


def test_a_rank_given_without_alpha_keeps_alpha_twice_the_rank(tmp_path):
    assert load(SFTConfig, ["-c", write(tmp_path, "lora_r: 8")]).lora.alpha == 16  # was 32: 4 x rank
    assert load(SFTConfig, ["--dataset", "x", "--lora.rank", "64"]).lora.alpha == 128
    assert load(SFTConfig, ["--dataset", "x", "--lora.rank", "8", "--lora.alpha", "8"]).lora.alpha == 8
    assert load(SFTConfig, ["-c", write(tmp_path, "lora_r: 8", "lora_alpha: 64")]).lora.alpha == 64
    assert load(SFTConfig, ["--dataset", "x"]).lora.alpha == 32  # the default rank 16


def test_peer_warmup_and_validation_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"warmup_steps; tunesmith warms up over a share of the steps: warmup_ratio"):
        load(SFTConfig, ["-c", write(tmp_path, "warmup_steps: 100")])
    assert load(SFTConfig, ["-c", write(tmp_path, "val_set_size: 0.05")]).val_split == 0.05  # axolotl's name


def test_a_typo_of_a_shortcut_suggests_the_shortcut_not_a_peers_alias():
    from tunesmith.config import InferConfig

    with pytest.raises(ConfigError, match=r"--max-token; did you mean --max-tokens\?"):  # was --max-new-tokens
        load(InferConfig, ["--max-token", "5"])
    with pytest.raises(ConfigError, match=r"--grpo.bta; did you mean --grpo.beta\?"):  # was --grpo.env
        load(RLHFConfig, ["--method", "grpo", "--dataset", "x", "--grpo.bta", "1"])
