"""tunesmith export (in-process): lineage through sft -> merge -> quantize, merge parity, bitsandbytes folders that
reload and generate, the adapter alone, the report, and the refusals."""

import json
import math

import pytest
import torch
import yaml

from tunesmith import ExportConfig, export
from tunesmith import lineage as L
from tunesmith.config import load
from tunesmith.errors import ConfigError, DataError
from tunesmith.templates import Template

# Perplexity after / before on the shipped held-out text, tiny random model with a trained adapter: bnb8 measured
# -0.006 %, bnb4 +0.003 % (its near-uniform predictions hide most of the error; the bound catches a broken export:
# wrong dequantization, a layer left at random, or the wrong model).
BOUND = {"bnb4": 0.01, "bnb8": 0.01}


@pytest.fixture(scope="module")
def merged(lora_run, tmp_path_factory):
    return export(ExportConfig(adapters=str(lora_run / "final"), output=str(tmp_path_factory.mktemp("x") / "merged")))


def read(folder, name):
    return json.loads((folder / name).read_text())


def test_a_runs_final_records_its_data_template_config_and_base(lora_run, toy_data, tiny_model):
    final = lora_run / "final"
    record = read(final, L.LINEAGE_FILE)
    assert record["kind"] == "adapter" and record["command"] == "sft"
    assert record["data"] == [{"spec": str(toy_data), "files": [
        {"path": str(toy_data.resolve()), "bytes": toy_data.stat().st_size, "sha256": L.file_sha256(toy_data)}]}]
    assert record["template_sha256"] == L.template_sha256(final) is not None
    assert record["config_sha256"] == L.json_sha256(yaml.safe_load((final / "config.yaml").read_text()))
    assert record["files"]["adapter_model.safetensors"]["sha256"] == L.file_sha256(final / "adapter_model.safetensors")
    assert record["parent"]["path"] == str(tiny_model.resolve())
    assert record["parent"]["config_sha256"] == L.file_sha256(tiny_model / "config.json")
    assert {"torch", "transformers", "peft", "trl"} <= set(record["versions"])


def test_merge_keeps_parity_and_chains_to_the_adapter(lora_run, merged, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([Template.load(merged).render_prompt([{"role": "user", "content": "code for river"}])])
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), lora_run / "final")
    with torch.no_grad():
        diff = (AutoModelForCausalLM.from_pretrained(merged)(ids).logits - adapter(ids).logits).abs().max().item()
        with adapter.disable_adapter():
            moved = (adapter(ids).logits - AutoModelForCausalLM.from_pretrained(merged)(ids).logits).abs().max().item()
    assert diff < 1e-4 and moved > 1e-3  # merged == adapter model, != base

    record = read(merged, L.LINEAGE_FILE)
    parent = read(lora_run / "final", L.LINEAGE_FILE)
    assert record["kind"] == "merged" and record["parent"]["sha256"] == L.record_sha256(parent)
    assert record["parent"]["record"] == parent
    rep = read(merged, L.REPORT_FILE)
    assert rep["perplexity_after"] == pytest.approx(rep["perplexity_before"], rel=1e-5)  # float32: the same model
    assert rep["greedy_agreement"]["identical"] == rep["greedy_agreement"]["prompts"] == 4
    base_bytes = sum(p.stat().st_size for p in tiny_model.iterdir())
    assert rep["size_before_bytes"] > base_bytes and rep["size_after_bytes"] > 0 and rep["seconds"] > 0


@pytest.mark.parametrize("quant", ["bnb4", "bnb8"])
def test_bnb_export_of_the_merged_model_reloads_generates_and_reports(merged, quant, tmp_path):
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    out = export(ExportConfig(model=str(merged), quant=quant, output=str(tmp_path / quant)))
    model = AutoModelForCausalLM.from_pretrained(out)  # config.json says how: no flags
    layer = bnb.nn.Linear4bit if quant == "bnb4" else bnb.nn.Linear8bitLt
    assert isinstance(model.model.layers[0].self_attn.q_proj, layer)
    ids = torch.tensor([Template.load(out).render_prompt([{"role": "user", "content": "code for river"}])])
    generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 4

    rep = read(out, L.REPORT_FILE)
    before, after = rep["perplexity_before"], rep["perplexity_after"]
    assert math.isfinite(before) and math.isfinite(after) and after != before
    assert abs(after / before - 1) < BOUND[quant]
    # merged -> quantized -> (adapter -> base): one chain, each link checkable
    chain = L.chain(read(out, L.LINEAGE_FILE))
    assert [c["kind"] for c in chain] == ["quantized", "merged", "adapter", "model"]
    assert chain[0]["export"]["quant"] == quant
    assert chain[0]["parent"]["sha256"] == L.record_sha256(read(merged, L.LINEAGE_FILE))
    shown = L.describe(out)
    assert "files: match the record" in shown and shown.count("on disk, unchanged") == 2

    with pytest.raises(ConfigError, match="already quantized"):
        export(ExportConfig(model=str(out), quant="bnb8", output=str(tmp_path / "again")))


def test_merge_lora_false_writes_the_adapter_that_loads_on_its_base(lora_run, tiny_model, toy_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = export(ExportConfig(adapters=str(lora_run / "final"), merge_lora=False, output=str(tmp_path / "adapter"),
                              eval_dataset=[str(toy_data)]))
    assert (out / "adapter_model.safetensors").read_bytes() == (lora_run / "final/adapter_model.safetensors").read_bytes()
    assert not (out / "model.safetensors").exists()
    record = read(out, L.LINEAGE_FILE)
    assert record["kind"] == "adapter" and record["parent"]["record"]["command"] == "sft"
    ids = torch.tensor([[1, 5, 9, 13]])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out)
    same = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), lora_run / "final")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, same(ids).logits)

    # the report scored the eval dataset's chats as the template prints them
    rep = read(out, L.REPORT_FILE)
    assert rep["perplexity_after"] == rep["perplexity_before"]
    template = Template.load(out)
    rows = [json.loads(line) for line in toy_data.read_text().splitlines()]
    expected = sum(len(template.tokenizer(template.render_text(r["messages"]), add_special_tokens=False)["input_ids"])
                   for r in rows)
    assert rep["eval_source"] == str(toy_data) and rep["eval_tokens"] == expected

    # inspect names what changed since
    (out / "tunesmith_template.json").write_text("{}")
    (out / "notes.txt").write_text("added later")
    shown = L.describe(out)
    assert "DIFFER: tunesmith_template.json: changed; notes.txt: not in the record" in shown
    assert "<- adapter by `tunesmith sft`" in shown
    assert L.describe(lora_run).startswith(f"{lora_run / 'final'}: lineage.json")  # a run folder: its final/


def test_the_api_function_survives_its_package_being_imported(lora_run, tmp_path):
    import tunesmith
    import tunesmith.export.run  # binds tunesmith.export to the package

    out = tunesmith.export(ExportConfig(adapters=str(lora_run / "final"), merge_lora=False, greedy_prompts=0,
                                        eval_tokens=16, output=str(tmp_path / "a")))
    assert (out / L.LINEAGE_FILE).exists()


def test_refusals_come_before_any_work(lora_run, toy_data, tmp_path):
    with pytest.raises(ConfigError, match="needs the adapter merged"):
        load(ExportConfig, ["--adapters", str(lora_run / "final"), "--merge-lora", "false", "--quant", "bnb4"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(toy_data.read_text() + '{"messages": [{"role": "customer", "content": "q"}]}\n')
    with pytest.raises(DataError, match=f"{bad}:9: messages"):
        export(ExportConfig(adapters=str(lora_run / "final"), output=str(tmp_path / "b"), eval_dataset=[str(bad)]))
    assert not (tmp_path / "b").exists()


def test_deploy_lists_each_models_lineage(lora_run, merged):
    """GET /v1/models carries each served folder's lineage (its record's hash, kind and chain)."""
    from serve.scripted_engine import ScriptedEngine

    from tunesmith.config import DeployConfig
    from tunesmith.serve.serving import Serving

    serving = Serving(ScriptedEngine(names=("merged", "toy")),
                      DeployConfig(model=str(merged), adapters=[str(lora_run / "final")]))
    cards = {card.id: card.lineage for card in serving.models().data}
    assert cards["merged"] == {"sha256": L.record_sha256(read(merged, L.LINEAGE_FILE)), "kind": "merged",
                               "created": read(merged, L.LINEAGE_FILE)["created"],
                               "chain": ["merged", "adapter", "model"],
                               "template_sha256": L.template_sha256(merged)}
    assert cards["toy"]["chain"] == ["adapter", "model"]
