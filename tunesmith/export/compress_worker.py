"""GPTQ, AWQ and FP8 with llmcompressor, run inside .venv-quant (scripts/quant-env.sh) by export/compress.py:

    .venv-quant/bin/python tunesmith/export/compress_worker.py JOB.json

A script, not a tunesmith module: that venv holds llmcompressor's pins (transformers 5.17) and no tunesmith, so this
file imports only the standard library, torch, transformers, datasets and llmcompressor. JOB.json names the plain
model folder, the output folder, the method and its settings, the calibration rows (token ids, rendered by the run's
Template in the main process) and the report's probe; the worker quantizes, saves in the compressed-tensors format
(what vLLM and transformers load), reloads the saved folder as a user would and measures it (perplexity over the
probe's windows, greedy answers), writing RESULT next to JOB.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path


def recipe(job: dict):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.awq import AWQModifier
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    ignore = ["lm_head"]
    if job["method"] == "fp8":  # FP8 weights per channel, activations per token at run time: no calibration
        return QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=ignore)
    weights = QuantizationArgs(num_bits=job["bits"], type="int", strategy="group", group_size=job["group_size"],
                               symmetric=job["method"] == "gptq")  # AWQ's own recipe is asymmetric (zero points)
    groups = {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}
    if job["method"] == "gptq":
        return GPTQModifier(config_groups=groups, ignore=ignore)
    cpu_awq_patch()
    return AWQModifier(config_groups=groups, ignore=ignore)


def cpu_awq_patch() -> None:
    """llmcompressor 0.14.0.1's AWQ pins its cached activations (IntermediatesCache.pin_memory) before each smoothing
    step, and torch refuses to pin memory on a machine without an accelerator ("Cannot access accelerator device
    when none is available"). Pinning only speeds host-to-GPU copies, so without an accelerator it is skipped. Guarded
    to that version and to machines without an accelerator; tests/export/test_compress.py checks it is still
    needed."""
    import importlib.metadata

    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if importlib.metadata.version("llmcompressor") != "0.14.0.1" or torch.accelerator.is_available():
        return
    if not job_env_disables_patch():
        IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None


def job_env_disables_patch() -> bool:
    import os

    return os.environ.get("TUNESMITH_NO_AWQ_CPU_PATCH") == "1"


def quantize(job: dict) -> None:
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    rows = job["calibration"]
    dataset = Dataset.from_list([{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in rows]) if rows else None
    oneshot(model=model, dataset=dataset, recipe=recipe(job), max_seq_length=job["max_length"],
            num_calibration_samples=len(rows) or 1)
    model.save_pretrained(job["output"], save_compressed=True)
    tokenizer.save_pretrained(job["output"])


def measure(folder: str, probe: dict) -> dict:
    """Perplexity and greedy answers of the saved folder, loaded as transformers loads it (the same measurement as
    tunesmith/export/report.py's, on the same ids)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    nll, count = 0.0, 0
    with torch.inference_mode():
        for window in probe["windows"]:
            ids = torch.tensor([window])
            logits = model(input_ids=ids).logits[0, :-1].float()
            nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += len(window) - 1
        answers = []
        for prompt in probe["prompts"]:
            ids = torch.tensor([prompt])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=probe["greedy_tokens"], eos_token_id=probe["stop_ids"] or None,
                                 pad_token_id=probe["pad_id"])
            answers.append(out[0, len(prompt):].tolist())
    return {"perplexity": math.exp(nll / count) if count else None, "greedy": answers}


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    started = time.perf_counter()
    quantize(job)
    seconds = time.perf_counter() - started
    config = json.loads((Path(job["output"]) / "config.json").read_text())
    result = {"seconds": seconds, "quantization_config": config.get("quantization_config"),
              **measure(job["output"], job["probe"])}
    Path(job["result"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
