"""The same commands on a CUDA GPU: device and dtype are picked from the hardware, QLoRA runs on bitsandbytes."""

import pytest
import yaml

from e2e_cli import read_metrics, run_cli


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_sft_uses_the_gpu_in_bf16(method, tiny_model, toy_data, tmp_path):
    run = tmp_path / method
    run_cli("sft", "--model", tiny_model, "--dataset", f"{toy_data}#48", "--method", method, "--max-steps", "12",
            "--batch-size", "4", "--learning-rate", "3e-2", "--logging-steps", "2", "--output-dir", run,
            "--report-to", "none")
    resolved = yaml.safe_load((run / "config.yaml").read_text())["_resolved"]
    assert resolved["device"] == "cuda" and resolved["dtype"] == "torch.bfloat16"
    losses = [m["loss"] for m in read_metrics(run) if "loss" in m]
    assert losses[-1] < losses[0]
    out = tmp_path / f"{method}.jsonl"
    run_cli("infer", "--adapters", run / "final", "--dataset", toy_data, "--output", out, "--generation.max-tokens", "4")
    assert len(out.read_text().splitlines()) == 12


@pytest.mark.gpu
@pytest.mark.parametrize("tuner", ["lora", "full"])
def test_fsdp2_on_one_gpu_trains_and_saves_a_plain_final(tuner, tiny_model, toy_data, tmp_path):
    """--fsdp with one process goes through torchrun as a one-rank group; with activation checkpointing the adapter
    must not come out empty (peft under FSDP's checkpoint wrapper saved an empty one) and final/ must load as is."""
    from safetensors.torch import load_file

    run = tmp_path / f"fsdp-{tuner}"
    run_cli("sft", "--model", tiny_model, "--dataset", f"{toy_data}#48", "--tuner", tuner, "--fsdp", "full-shard",
            "--gradient-checkpointing", "true", "--max-steps", "8", "--batch-size", "4", "--learning-rate",
            "3e-2" if tuner == "lora" else "1e-3", "--logging-steps", "2", "--output-dir", run, "--report-to", "none")
    losses = [m["loss"] for m in read_metrics(run) if "loss" in m]
    assert losses[-1] < losses[0]
    final = run / "final"
    if tuner == "lora":
        weights = load_file(final / "adapter_model.safetensors")
        assert weights and any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in weights.items())
    out = tmp_path / f"{tuner}.jsonl"
    args = ("--adapters", final) if tuner == "lora" else ("--model", final)
    run_cli("infer", *args, "--dataset", toy_data, "--output", out, "--generation.max-tokens", "4")
    assert len(out.read_text().splitlines()) == 12
