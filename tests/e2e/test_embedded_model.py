"""End to end on the embedded SmolLM2-135M-Instruct (the real default model, converted from its GGUF once)."""

import json

import pytest
import torch

from e2e_cli import read_metrics, run_main


@pytest.mark.slow
def test_short_lora_run_on_smollm2_lowers_loss_and_loads_with_plain_peft(tmp_path):
    # Four short identity answers, seen again each step: the loss must fall at every step. No warmup: its first step
    # would train at learning rate 0 (the same loss twice); each step costs ~5 s of a 135M model on one CPU core.
    # The console script's main() in this process (run_main): the test loads the result with peft here anyway, so a
    # second interpreter would import torch, transformers and peft (~12 s of CPU) only to train; tunesmith's patches
    # apply to its own model and trainer objects, never at import or to a class, so the peft below is still plain.
    run = tmp_path / "smol"
    run_main("sft", "--dataset", "self-cognition#4", "--model-name", "Quill", "--model-author", "the docs team",
             "--max-steps", "3", "--warmup-ratio", "0", "--batch-size", "4", "--learning-rate", "2e-3",
             "--logging-steps", "1", "--max-length", "256", "--output-dir", run, "--report-to", "none")
    losses = [m["loss"] for m in read_metrics(run) if "loss" in m]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2] and losses[-1] < 0.8 * losses[0], losses
    config = json.loads((run / "final" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.models.embedded import prepared_folder

    base = AutoModelForCausalLM.from_pretrained(prepared_folder(), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, run / "final")
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Who are you?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
