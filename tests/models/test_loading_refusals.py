"""Folders the shared loader (models/load.py, models/runs.py) refuses with a message naming the fix, instead of loading
the wrong thing or ending in a peft/transformers traceback: a reward model where a chat model is needed, a full model
given as --adapters, a missing adapter folder, a LoRA adapter given as --model."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from tiny import make_tiny_model

from tunesmith.errors import ConfigError, ModelNotFoundError
from tunesmith.models import load as models
from tunesmith.models.runs import read_run_output


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A full model folder: what a `--tuner full` run's final/ holds (config.json, weights, tokenizer)."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="module")
def rm_final(base, tmp_path_factory):
    """runs/rm/final as `rlhf --method rm` leaves it (train/rm.py): the base loaded by load_reward_base (score head,
    num_labels=1), saved as a plain sequence-classification folder, with the run's config.yaml beside it."""
    import torch
    from transformers import AutoTokenizer

    from tunesmith.models.reward import load_reward_base

    tokenizer = AutoTokenizer.from_pretrained(base)
    final = tmp_path_factory.mktemp("runs") / "rm" / "final"
    load_reward_base(base, torch.float32, "cpu", tokenizer.pad_token_id).save_pretrained(final)
    tokenizer.save_pretrained(final)
    (final.parent / "config.yaml").write_text(yaml.safe_dump({"model": str(base), "method": "rm", "tuner": "lora"}))
    return final


@pytest.fixture(scope="module")
def lora_final(base, tmp_path_factory):
    """runs/lora/final: a LoRA adapter (adapter_config.json, no config.json), without the run's config.yaml."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    final = tmp_path_factory.mktemp("runs") / "lora" / "final"
    model = AutoModelForCausalLM.from_pretrained(base)
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM")).save_pretrained(final)
    return final


def reward_refusal(folder) -> list[str]:
    return [str(folder), "a reward model", "scores answers", "cannot generate", f"--rewards.model {folder}", "grpo"]


# -----------------------------------------------------------------------------
# A reward model where a chat model is needed


def test_reward_model_is_refused_by_the_causal_lm_loader_and_the_run_reader(rm_final):
    import torch

    with pytest.raises(ConfigError) as err:  # --model RM: infer, deploy, eval, export all load through load_model
        models.load_model(models.resolve(str(rm_final)), torch.float32, "cpu")
    assert all(part in str(err.value) for part in reward_refusal(rm_final))
    with pytest.raises(ConfigError) as err:  # --adapters RM: every command reads the run first
        read_run_output(rm_final)
    assert all(part in str(err.value) for part in reward_refusal(rm_final))


def test_reward_model_is_refused_by_the_engine_and_export(rm_final, tmp_path):
    from tunesmith.cli.main import main
    from tunesmith.infer.transformers_engine import TransformersEngine

    with pytest.raises(ConfigError, match="a reward model"):
        TransformersEngine.load(adapters={"rm": str(rm_final)}, device="cpu")
    out = tmp_path / "exported"
    assert main(["export", "--adapters", str(rm_final), "--output", str(out)]) == ConfigError.exit_code
    assert not out.exists()  # before: a LlamaForCausalLM with the score head dropped and an untrained LM head


def test_reward_model_still_loads_where_it_is_meant_to(rm_final):
    """Scoring (grpo/ppo --rewards.model) and rm training from an earlier reward model keep working."""
    import torch

    from tunesmith.models.reward import load_reward_base, load_reward_model

    assert models.resolve(str(rm_final)) == rm_final
    model, _ = load_reward_model(rm_final, device="cpu")
    assert model.config.num_labels == 1
    assert load_reward_base(rm_final, torch.float32, "cpu", pad_token_id=2).config.num_labels == 1


def test_other_sequence_classifiers_are_refused_and_chat_models_are_not(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"],
                                                      "id2label": {"0": "a", "1": "b", "2": "c"}}))
    with pytest.raises(ConfigError, match=r"a sequence classifier \(BertForSequenceClassification, 3 labels\).*"
                                          "cannot generate.*deploy --encoders"):
        models.refuse_scorer(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    models.refuse_scorer(tmp_path)


def test_infer_refuses_a_reward_model_through_the_console_script(rm_final, tmp_path):
    """What the user sees: one line naming the folder and the fix, no traceback, non-zero exit, nothing written."""
    prompts = tmp_path / "q.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "code for apple"}]}) + "\n")
    tunesmith = shutil.which("tunesmith", path=str(Path(sys.executable).parent)) or "tunesmith"
    proc = subprocess.run([tunesmith, "infer", "--model", str(rm_final), "--dataset", str(prompts), "--output",
                           str(tmp_path / "answers.jsonl")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == ConfigError.exit_code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and all(part in error[0] for part in reward_refusal(rm_final))
    assert not (tmp_path / "answers.jsonl").exists()


# -----------------------------------------------------------------------------
# --adapters that is no adapter


def test_full_model_given_as_adapters_says_to_pass_it_as_model(base):
    from transformers import AutoModelForCausalLM

    from tunesmith.train.tuners import make_trainable

    model = AutoModelForCausalLM.from_pretrained(base)
    with pytest.raises(ConfigError) as err:  # sft --adapters runs/full/final (before: peft's ValueError traceback)
        make_trainable(SimpleNamespace(tuner="lora", adapters=str(base)), model)
    assert str(base) in str(err.value) and "holds a full model" in str(err.value)
    assert f"--model {base} instead" in str(err.value)


def test_a_run_folder_given_as_adapters_names_its_final_or_newest_checkpoint(tmp_path, lora_final):
    import shutil

    from tunesmith.errors import ModelNotFoundError
    from tunesmith.models.load import check_adapter_folder

    run = tmp_path / "run"
    shutil.copytree(lora_final, run / "final")
    with pytest.raises(ModelNotFoundError, match=f"the run's adapter is {run / 'final'}"):
        check_adapter_folder(run)
    cut = tmp_path / "cut"  # a run cut off before final/: its checkpoints hold the adapter
    for step in (2, 10):
        shutil.copytree(lora_final, cut / f"checkpoint-{step}")
    with pytest.raises(ModelNotFoundError, match=f"no final/ .*--resume, or use its newest checkpoint {cut / 'checkpoint-10'}"):
        check_adapter_folder(cut)


def test_reward_model_given_as_adapters_is_refused_as_a_reward_model(base, rm_final):
    from transformers import AutoModelForCausalLM

    with pytest.raises(ConfigError) as err:
        models.attach_adapters(AutoModelForCausalLM.from_pretrained(base), rm_final, trainable=True)
    assert all(part in str(err.value) for part in reward_refusal(rm_final))


def test_missing_adapter_folder_is_named(base, tmp_path):
    from transformers import AutoModelForCausalLM

    missing = tmp_path / "runs" / "nothere" / "final"
    with pytest.raises(ModelNotFoundError, match=f"adapters: {missing}: folder not found"):
        models.attach_adapters(AutoModelForCausalLM.from_pretrained(base), missing, trainable=True)
    # training reads the adapter's tokenizer first (train/preflight.py): before, transformers took it for a hub id
    with pytest.raises(ModelNotFoundError, match=f"{missing}: folder not found"):
        models.load_tokenizer(missing)


# -----------------------------------------------------------------------------
# --model that is an adapter


def test_lora_adapter_given_as_model_names_its_base(base, lora_final, tmp_path):
    # no config.yaml: the base comes from adapter_config.json's base_model_name_or_path
    with pytest.raises(ModelNotFoundError) as err:
        models.resolve(str(lora_final))
    assert str(err.value) == f"{lora_final} holds a LoRA adapter, not a whole model: pass --model {base} --adapters " \
                             f"{lora_final}"
    # a run's config.yaml names the base as the user gave it (a registry name here), and wins
    run = tmp_path / "run"
    shutil.copytree(lora_final, run / "final")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "smollm2-135m-instruct"}))
    with pytest.raises(ModelNotFoundError, match=r"pass --model smollm2-135m-instruct --adapters"):
        models.resolve(str(run / "final"))


def test_the_end_of_an_rm_run_points_at_rewards_model_not_adapters(rm_final, lora_final):
    from tunesmith.cli.main import finished
    from tunesmith.train.run import RunResult

    rm_line = finished(RunResult(rm_final.parent, rm_final, 3, 0.7, 0.5))
    assert f"--rewards.model {rm_final}" in rm_line and "--adapters" not in rm_line
    assert f"--adapters {lora_final}" in finished(RunResult(lora_final.parent, lora_final, 3, 0.7, 0.5))


def test_the_end_of_a_full_weights_run_points_at_model_and_quotes_paths(tmp_path, lora_final):
    """A full fine-tune's final/ is a model itself: --adapters on it is refused, so the last line says --model; a run
    folder with a space stays one shell word."""
    import shlex

    from tunesmith.cli.main import finished
    from tunesmith.train.run import RunResult

    full = tmp_path / "my runs" / "full" / "final"
    full.mkdir(parents=True)
    (full / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    line = finished(RunResult(full.parent, full, 3, 0.7, 0.5))
    assert "--adapters" not in line and f"--model {shlex.quote(str(full))} in tunesmith infer" in line
    assert shlex.split(line.split("--model ", 1)[1])[0] == str(full)
