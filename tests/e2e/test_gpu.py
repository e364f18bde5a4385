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
