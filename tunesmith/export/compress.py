"""GPTQ, AWQ and FP8 exports through llmcompressor, which runs in its own venv (.venv-quant, scripts/quant-env.sh):
llmcompressor 0.14 pins transformers<=5.17 where tunesmith pins 5.23, as vLLM is isolated in .venv-vllm.

    tunesmith export --adapters runs/prd/final --quant gptq --bits 4 --group-size 128 --calib-dataset prd-assistant

This side checks the settings against the model before any work (a group size that does not divide every quantized
layer's input width is refused with the sizes that do), renders the calibration rows with the run's own Template (so
calibration sees the trained format: a DPO run's pairs as prompt + chosen answer, a GRPO run's prompts as prompts; a
bad row is named file:line), writes the merged model as a plain folder, and
hands a job file to export/compress_worker.py in .venv-quant, which quantizes, saves in the compressed-tensors format
(vLLM and transformers load it; transformers needs the compressed-tensors package), reloads the folder and measures it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tunesmith.errors import ConfigError, HardwareError

METHODS = ("gptq", "awq", "fp8")
WORKER = Path(__file__).with_name("compress_worker.py")


def python() -> Path:
    """The interpreter of the quantization venv: $TUNESMITH_QUANT_PYTHON, else .venv-quant beside the checkout or in
    the working directory."""
    chosen = os.environ.get("TUNESMITH_QUANT_PYTHON")
    if chosen:
        if not Path(chosen).exists():
            raise HardwareError(f"TUNESMITH_QUANT_PYTHON={chosen}: no such file (a python with llmcompressor 0.14)")
        return Path(chosen)
    for path in (Path(__file__).resolve().parents[2] / ".venv-quant/bin/python", Path(".venv-quant/bin/python")):
        if path.exists():
            return path
    raise HardwareError("quant: gptq, awq and fp8 run llmcompressor, which pins transformers 5.17 (tunesmith pins "
                        "5.23), so it lives in a venv of its own: run `bash scripts/quant-env.sh` (builds .venv-quant, "
                        "about 2 minutes) or point TUNESMITH_QUANT_PYTHON at a python that has llmcompressor 0.14")


def widths(config: dict) -> dict[str, int]:
    """Input widths of the Linear layers that get quantized (all but lm_head), by the config of a decoder LM."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    out = {"hidden_size (q/k/v, gate/up inputs)": config["hidden_size"],
           "num_attention_heads x head_dim (o_proj input)": heads * head_dim}
    if config.get("intermediate_size"):
        out["intermediate_size (down_proj input)"] = config["intermediate_size"]
    return out


def check_group_size(config: dict, group_size: int) -> None:
    sizes = widths(config)
    bad = {name: w for name, w in sizes.items() if w % group_size}
    if not bad:
        return
    common = math.gcd(*sizes.values())
    fits = [g for g in (256, 128, 64, 32, 16) if common % g == 0]
    names = ", ".join(f"{name} = {w}" for name, w in bad.items())
    hint = f"use --group-size {fits[0]}" + (f" (or {', '.join(map(str, fits[1:]))})" if fits[1:] else "") if fits \
        else "no power of two from 16 to 256 divides them all"
    raise ConfigError(f"group_size: {group_size} does not divide {names}; {hint}")


# The rows each training method reads (train/sft.py, pt.py, preference.py, online.py), by the name config.yaml records:
# rlhf runs record `method`, pt runs `_resolved.command`. Calibration reads a run's data as its training did.
RUN_KINDS = {"dpo": "preference", "orpo": "preference", "simpo": "preference", "cpo": "preference", "rm": "preference",
             "kto": "kto", "grpo": "prompts", "ppo": "prompts"}
# A dataset of unknown origin (--calib-dataset, or a run that recorded no method): the first of these that reads a
# row. A pair or a KTO row has a prompt too, so prompts come after them; a chat reads as sft (a KTO row with its
# completion, a pair as messages + rejected_response: the same text), text only as pt.
GUESSED_KINDS = ("sft", "preference", "kto", "prompts", "pt")


def run_kind(config: dict) -> str:
    """The row kind a run trained on, from its config.yaml: sft, pt, preference, kto or prompts."""
    method = config.get("method")
    if isinstance(method, str) and method in RUN_KINDS:  # sft's `method: lora` of earlier releases is no rlhf method
        return RUN_KINDS[method]
    return "pt" if (config.get("_resolved") or {}).get("command") == "pt" else "sft"


def calibration(template: Any, specs: list[str], samples: int, max_length: int, seed: int, encoding: str,
                kind: str | None = None) -> list[list[int]]:
    """`samples` rows of the datasets (fewer, each once, where the data holds fewer: said in one line) as text the
    model saw in training, each rendered whole by the run's Template (chats) or tokenized (text), at most max_length
    tokens. `kind` is how the run read them (run_kind); None reads them as the first of GUESSED_KINDS that reads a
    row. A chat is rendered whole, a preference pair as its prompt +
    chosen answer, a KTO row as prompt + completion, a prompt-only row (grpo, ppo) as the prompt that asks for the
    answer."""
    from tunesmith.data.load import load_rows

    specs = [s if "#" in s else f"{s}#{samples}" for s in specs]  # name#N: N rows drawn with the seed
    tried = []
    with _quiet_repeats():
        for guess in [kind] if kind else GUESSED_KINDS:
            tried.append((guess, load_rows(specs, kind=guess, seed=seed, encoding=encoding)))
            if tried[-1][1].rows:  # the first kind that reads a row is the data's; its problems are its bad rows
                break
    kind, data = tried[-1] if tried[-1][1].rows else tried[0]  # none reads a row: sft's problems say what rows lack
    data.problems = list(dict.fromkeys(data.problems))  # a bad row drawn again is named once
    data.raise_if_bad(skip_bad_rows=False, fix="Fix these rows, or pass --calib-dataset FILE.")
    rows = []
    for text in calibration_texts(template, distinct(data.rows)[:samples], asks=kind == "prompts"):
        ids = template.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > 1:
            rows.append(ids[:max_length])
    if len(rows) < samples:
        logging.getLogger("tunesmith").info(
            "calibrating on %d rows (fewer than calib_samples = %d): the calibration data has no more, and a row "
            "repeated adds nothing", len(rows), samples)
    return rows


def distinct(rows: list) -> list:
    """Each row once, in order. `name#N` repeats a dataset of fewer than N rows to make N (data/load.py), which
    training wants; calibration gains nothing from a copy (the statistics GPTQ/AWQ gather are per token), only time
    and a skew toward the repeated rows. A row is its file and line, so two equal rows of the data both count."""
    seen, out = set(), []
    for row in rows:
        key = (row.source, row.line)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


@contextlib.contextmanager
def _quiet_repeats():
    """Leaves out data/load.py's "N drawn (rows repeated)": calibration uses each row once and says how many."""
    log = logging.getLogger("tunesmith")
    drop = lambda record: "(rows repeated)" not in record.getMessage()  # noqa: E731
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


def calibration_texts(template: Any, rows: list, asks: bool = False) -> list[str]:
    """Each row as the text training rendered: a chat whole, the prompt + the chosen answer of a pair (training
    renders prompt + answer the same way, train/preference.py answer_ids), a KTO row's prompt + completion (either
    label: the format is what calibration needs); `asks`: prompts (grpo, ppo), each with the turn that asks for the
    answer, as the rollouts render them."""
    from tunesmith.data.rows import Preference, Text, UnpairedPreference

    out = []
    for row in rows:
        if isinstance(row, Text):
            out.append(row.text)
        elif isinstance(row, Preference):
            out.append(template.render_text(row.prompt + [{"role": "assistant", "content": row.chosen}]))
        elif isinstance(row, UnpairedPreference):
            out.append(template.render_text(row.prompt + [{"role": "assistant", "content": row.completion}]))
        else:  # a Conversation: sft's chat, or a prompt (kind "prompts")
            out.append(template.render_text(row.messages, add_generation_prompt=asks))
    return out


def run(model: Any, template: Any, staging: Path, method: str, bits: int, group_size: int,
        rows: list[list[int]], max_length: int, probe: Any, greedy_tokens: int) -> dict:
    """Quantize `model` into `staging` in .venv-quant. Returns the worker's result: its measurements of the output."""
    plain = staging / ".plain"
    model.save_pretrained(plain, safe_serialization=True)
    template.tokenizer.save_pretrained(plain)
    job = {"model": str(plain), "output": str(staging), "method": method, "bits": bits, "group_size": group_size,
           "calibration": rows, "max_length": max_length, "result": str(staging / ".result.json"),
           "probe": {"windows": probe.windows, "prompts": probe.prompts, "stop_ids": probe.stop_ids,
                     "pad_id": probe.pad_id, "greedy_tokens": greedy_tokens}}
    job_file = staging / ".job.json"
    job_file.write_text(json.dumps(job))
    proc = subprocess.run([str(python()), str(WORKER), str(job_file)], check=False, capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise HardwareError(f"quant: {method}: llmcompressor failed in {python()}:\n{tail}")
    result = json.loads((staging / ".result.json").read_text())
    for name in (".plain", ".job.json", ".result.json"):
        path = staging / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    template.save(staging)
    print(f"{method}: quantized in {result['seconds']:.1f} s by llmcompressor ({python()})", file=sys.stderr)
    return result
