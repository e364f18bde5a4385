"""tunesmith export --quant gptq|awq|fp8 (llmcompressor in .venv-quant) and --push-to-hub.

The refusals run everywhere. The quantizing tests need .venv-quant (`bash scripts/quant-env.sh`, about 2 minutes) and
skip with that reason where it is absent: llmcompressor 0.14 pins transformers 5.17, the main venv 5.23. Bounds:
perplexity after / before on the shipped held-out text, tiny random model with a trained adapter: gptq (4-bit, group
32) measured +0.08 %, awq +0.11 %, fp8 -0.01 %; asserted within 1 % and different from before.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith import ExportConfig, export
from tunesmith import lineage as L
from tunesmith.errors import ConfigError, DataError, HardwareError
from tunesmith.export import compress

QUANT_PYTHON = Path(__file__).resolve().parents[2] / ".venv-quant/bin/python"
needs_venv = pytest.mark.skipif(not QUANT_PYTHON.exists() and not os.environ.get("TUNESMITH_QUANT_PYTHON"),
                                reason="needs .venv-quant with llmcompressor: run `bash scripts/quant-env.sh`")


def test_group_size_venv_calibration_and_hub_are_checked_before_any_work(lora_run, toy_data, tmp_path, monkeypatch):
    final = str(lora_run / "final")
    with pytest.raises(ConfigError, match=r"group_size: 128 does not divide hidden_size \(q/k/v, gate/up inputs\) = "
                                          r"64, .*; use --group-size 64 \(or 32, 16\)"):
        export(ExportConfig(adapters=final, quant="gptq", output=str(tmp_path / "a")))
    monkeypatch.setenv("TUNESMITH_QUANT_PYTHON", str(tmp_path / "nowhere/python"))
    with pytest.raises(HardwareError, match="nowhere/python: no such file"):
        export(ExportConfig(adapters=final, quant="awq", group_size=32, output=str(tmp_path / "a")))
    monkeypatch.setenv("TUNESMITH_QUANT_PYTHON", sys.executable)  # present: the next check is the data's
    bad = tmp_path / "calib.jsonl"
    bad.write_text(toy_data.read_text() + '{"messages": [{"role": "user", "content": ""}]}\n')
    with pytest.raises(DataError, match=f"{bad}:9: messages"):
        export(ExportConfig(adapters=final, quant="gptq", group_size=32, calib_dataset=[str(bad)],
                            output=str(tmp_path / "a")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="push_to_hub: the Hugging Face hub cannot be reached"):
        export(ExportConfig(adapters=final, push_to_hub="me/prd", output=str(tmp_path / "a")))
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".a-*"))


def test_calibration_rows_are_the_runs_chats_as_its_template_renders_them(lora_run, toy_data):
    from tunesmith.templates import Template

    template = Template.load(lora_run / "final")
    rows = compress.calibration(template, [str(toy_data)], samples=8, max_length=2048, seed=42, encoding="utf-8")
    texts = {template.tokenizer.decode(r) for r in rows}
    chats = [json.loads(line)["messages"] for line in toy_data.read_text().splitlines()]
    assert texts == {template.render_text(c) for c in chats}  # all 8 rows, whole conversations, answers included


@needs_venv
def test_gptq_export_reloads_generates_and_chains(lora_run, tmp_path):
    out = export(ExportConfig(adapters=str(lora_run / "final"), quant="gptq", group_size=32, calib_samples=8,
                              output=str(tmp_path / "gptq")))
    quant = json.loads((out / "config.json").read_text())["quantization_config"]
    assert quant["quant_method"] == "compressed-tensors" and quant["format"] == "pack-quantized"
    weights = quant["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"], weights["strategy"]) == (4, 32, "group")
    report = json.loads((out / L.REPORT_FILE).read_text())
    before, after = report["perplexity_before"], report["perplexity_after"]
    assert math.isfinite(after) and after != before and abs(after / before - 1) < 0.01
    # the worker reloaded the saved folder and generated greedily with it
    assert report["greedy_agreement"]["prompts"] == 4 and all(g["after"] for g in report["greedy"])
    record = json.loads((out / L.LINEAGE_FILE).read_text())
    assert record["export"]["calibration_rows"] == 8 and record["export"]["bits"] == 4
    assert [c["kind"] for c in L.chain(record)] == ["quantized", "adapter", "model"]
    # and transformers reloads it where compressed-tensors is installed (the quant venv)
    probe = (f"from transformers import AutoModelForCausalLM; import torch; m = AutoModelForCausalLM.from_pretrained("
             f"{str(out)!r}); print(m.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=3, do_sample=False).shape)")
    done = subprocess.run([str(compress.python()), "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "torch.Size([1, 6])"
    # tunesmith's own engine (infer, deploy) serves it from the main venv (compressed-tensors in the serve extra):
    # its greedy answers are the ones the quant venv measured for the report
    from tunesmith.export.report import PROMPTS
    from tunesmith.infer import load_engine
    from tunesmith.infer.types import SamplingParams
    from tunesmith.templates import Template

    engine = load_engine(model=str(out), device="cpu")
    answers = engine.chat([[{"role": "user", "content": p}] for p in PROMPTS], SamplingParams(max_tokens=16))
    stop_texts = [Template.load(out).tokenizer.decode([t]) for t in Template.load(out).stop_token_ids]
    for answer, measured in zip(answers, report["greedy"]):
        expected = measured["after"]
        for stop in stop_texts:
            expected = expected.split(stop)[0]
        assert answer.choices[0].text == expected


@needs_venv
@pytest.mark.parametrize("method", ["awq", "fp8"])
def test_awq_and_fp8_exports(lora_run, method, tmp_path):
    out = export(ExportConfig(adapters=str(lora_run / "final"), quant=method, group_size=32, calib_samples=8,
                              greedy_prompts=1, output=str(tmp_path / method)))
    quant = json.loads((out / "config.json").read_text())["quantization_config"]
    weights = quant["config_groups"]["group_0"]["weights"]
    assert weights["type"] == ("float" if method == "fp8" else "int")
    assert weights["symmetric"] is (method == "fp8")  # AWQ: zero points (asymmetric)
    report = json.loads((out / L.REPORT_FILE).read_text())
    assert abs(report["perplexity_after"] / report["perplexity_before"] - 1) < 0.01


@needs_venv
def test_the_cpu_awq_patch_is_still_needed(lora_run, tmp_path):
    """Without export/compress_worker.py's cpu_awq_patch, llmcompressor 0.14.0.1's AWQ fails on a CPU-only machine."""
    out = tmp_path / "plain"
    from tunesmith.export.merge import merge_adapter
    from tunesmith.models.load import resolve
    from tunesmith.models.runs import read_run_output
    from tunesmith.templates import Template

    run = read_run_output(lora_run / "final")
    model, _ = merge_adapter(resolve(run.base_model), run.folder, Template.load(run.folder))
    model.save_pretrained(out)
    Template.load(run.folder).tokenizer.save_pretrained(out)
    job = {"model": str(out), "output": str(tmp_path / "awq"), "method": "awq", "bits": 4, "group_size": 32,
           "calibration": [list(range(5, 40))] * 4, "max_length": 64, "result": str(tmp_path / "r.json"),
           "probe": {"windows": [], "prompts": [], "stop_ids": [], "pad_id": 0, "greedy_tokens": 1}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    proc = subprocess.run([str(compress.python()), str(compress.WORKER), str(tmp_path / "job.json")],
                          check=False, capture_output=True, text=True,
                          env={**os.environ, "TUNESMITH_NO_AWQ_CPU_PATCH": "1"})
    assert proc.returncode != 0 and "Cannot access accelerator device when none is available" in proc.stderr
