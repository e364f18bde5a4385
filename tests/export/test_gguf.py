"""tunesmith export --to gguf / ollama: files that transformers reads back (gguf_file=) with the source's logits, the
tokenizer and chat template in the metadata, an Ollama TEMPLATE that expands to our Template's prompt text, and the
refusals.

Tolerances (relative L2 error of the logits vs the float32 source): f16 < 1e-2 (the issue's bound; measured 4e-4 to
9e-4); q8_0 < 3e-2 on the tiny random models (measured 1.0e-2 to 1.7e-2: rows of 64 are two blocks, so each row's
scale is set by few weights) and < 5e-2 on SmolLM2-135M (measured 3.3e-2 over 30 layers: its weights come from a
Q4_1 file, which q8_0's per-block absmax grid does not hold exactly), with its perplexity within 2 % (measured
+0.64 %) and the greedy argmax equal at >= 90 % of positions (measured 95 %).
"""

import functools
import json
import re

import gguf
import pytest
import torch
from gotemplate import expand
from real_tokenizers import QWEN_PATTERN
from tiny_arch import ARCH_CONFIGS, make_arch_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunesmith import ExportConfig, export
from tunesmith.config import load
from tunesmith.errors import ConfigError, TemplateError
from tunesmith.templates import Template

TOL = {"f16": 1e-2, "q8_0": 3e-2}
CHAT = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "And a fruit?"}]


def rel_error(a, b):
    return ((a - b).norm() / a.norm()).item()


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


@pytest.fixture(scope="module")
def arch_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("arch")
    return {t: make_arch_model(root / f"tiny-{t}", t, QWEN_PATTERN if t.startswith("qwen") else None)
            for t in ARCH_CONFIGS}


@pytest.mark.parametrize("model_type", list(ARCH_CONFIGS))
def test_each_architecture_reads_back_with_the_sources_logits(arch_models, model_type, tmp_path):
    folder = arch_models[model_type]
    source = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    template = Template.load(folder)
    ids = template.render_prompt(CHAT)
    expected = logits_of(source, ids)
    # llama, qwen2 and the embedded SmolLM2 (below) at both types; the other architectures at q8_0, which covers the
    # same layout code
    types = ("f16", "q8_0") if model_type in ("llama", "qwen2") else ("q8_0",)
    for gguf_type in types:
        out = export(ExportConfig(model=str(folder), to="gguf", gguf_type=gguf_type, greedy_prompts=1,
                                  output=str(tmp_path / gguf_type)))
        name = f"{folder.name}-{gguf_type}.gguf"
        loaded = AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=torch.float32)
        error = rel_error(expected, logits_of(loaded, ids))
        assert error < TOL[gguf_type], (model_type, gguf_type, error)
        assert error > 0  # a quantized file, not the source weights
        settings = json.loads((out / "lineage.json").read_text())["export"]
        assert settings["architecture"] == ("llama" if model_type == "mistral" else model_type.replace("_text", ""))
    # the tokenizer in the metadata tokenizes as ours (vocabulary, merges, special tokens, pre-tokenizer)
    gguf_tok = AutoTokenizer.from_pretrained(out, gguf_file=name)
    text = template.render_text(CHAT, add_generation_prompt=True) + " 12345 numbers\n\n  spaced"
    assert gguf_tok(text, add_special_tokens=False)["input_ids"] == template.tokenizer(text, add_special_tokens=False)["input_ids"]
    reader = gguf.GGUFReader(out / name)
    assert reader.fields["tokenizer.chat_template"].contents() == template.tokenizer.chat_template
    assert reader.fields["tokenizer.ggml.pre"].contents() == ("qwen2" if model_type.startswith("qwen") else "gpt-2")
    assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == template.tokenizer.eos_token_id
    assert reader.fields["tokenizer.ggml.add_bos_token"].contents() is False


def test_llama_layout_is_the_interleaved_rope_llama_cpp_reads(arch_models, tmp_path):
    """q_proj rows are permuted head by head; a file without the permutation would load with wrong logits."""
    folder = arch_models["llama"]
    out = export(ExportConfig(model=str(folder), to="gguf", gguf_type="f32", greedy_prompts=0,
                              output=str(tmp_path / "f32")))
    reader = gguf.GGUFReader(out / "tiny-llama-f32.gguf")
    q_file = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight").data
    q_hf = AutoModelForCausalLM.from_pretrained(folder).model.layers[0].self_attn.q_proj.weight.detach().numpy()
    assert not (q_file == q_hf).all()
    head = q_hf[:32]  # head 0: rows 0..15 and 16..31 interleaved
    assert (q_file[0] == head[0]).all() and (q_file[1] == head[16]).all() and (q_file[2] == head[1]).all()


def test_the_embedded_smollm2_round_trips_through_q8_0(tmp_path, monkeypatch):
    # transformers parses the GGUF twice and rebuilds gguf's tensor-name table once per module (~25 s for 30
    # layers and 49k tokens); both are pure functions of their arguments, so they are cached here
    monkeypatch.setattr(gguf, "get_tensor_name_map", functools.cache(gguf.get_tensor_name_map))
    reader = gguf.GGUFReader
    monkeypatch.setattr(gguf, "GGUFReader", functools.cache(lambda path, *a, **k: reader(path, *a, **k)))

    # greedy_prompts=0: the report's greedy answers (2 x 16 steps of 30 layers) are asserted nowhere here; the argmax
    # agreement below measures the same thing on the file read back
    out = export(ExportConfig(model="smollm2-135m-instruct", to="gguf", gguf_type="q8_0", eval_tokens=128,
                              greedy_prompts=0, output=str(tmp_path / "smol")))
    name = "smollm2-135m-instruct-q8_0.gguf"
    template = Template.load(out)
    ids = template.render_prompt([{"role": "user", "content": "What is the capital of France?"}])
    from tunesmith.models.load import resolve

    expected = logits_of(AutoModelForCausalLM.from_pretrained(resolve("smollm2-135m-instruct")), ids)
    got = logits_of(AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=torch.float32), ids)
    assert rel_error(expected, got) < 5e-2
    assert (expected.argmax(-1) == got.argmax(-1)).float().mean() >= 0.9
    report = json.loads((out / "export_report.json").read_text())
    assert 1.0 <= report["perplexity_after"] / report["perplexity_before"] < 1.02
    assert report["size_after_bytes"] < 0.3 * report["size_before_bytes"]  # 8.5 bits per weight vs 32


def test_ollama_modelfile_template_expands_to_our_prompt_text(lora_run, tmp_path):
    out = export(ExportConfig(adapters=str(lora_run / "final"), to="ollama", gguf_type="q8_0", greedy_prompts=0,
                              output=str(tmp_path / "ollama")))
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./toy-q8_0.gguf\n") and (out / "toy-q8_0.gguf").exists()
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "PARAMETER num_ctx 2048" in modelfile
    go = re.search(r'TEMPLATE """(.*?)"""', modelfile, re.DOTALL).group(1)
    template = Template.load(lora_run / "final")

    def ollama_prompt(messages, default_system=None):
        """What Ollama hands its template: .System (the request's, else the Modelfile's) and .Messages."""
        system = next((m["content"] for m in messages if m["role"] == "system"), default_system)
        return expand(go, {"System": system or "", "Messages": [{"Role": m["role"], "Content": m["content"]}
                                                                for m in messages]})

    two_turns = CHAT  # system prompt, user, assistant, user
    assert ollama_prompt(two_turns) == template.render_text(two_turns, add_generation_prompt=True)
    assert ollama_prompt(two_turns) == template.tokenizer.decode(template.render_prompt(two_turns))
    # without a system prompt the template's own default block is printed, as the chat template does
    assert ollama_prompt(two_turns[1:]) == template.render_text(two_turns[1:], add_generation_prompt=True)
    assert "You are a helpful AI assistant named SmolLM" in ollama_prompt(two_turns[1:])


def test_refusals_name_what_is_supported(arch_models, lora_run, tmp_path):
    odd = tmp_path / "odd"
    odd.mkdir()
    for f in arch_models["llama"].iterdir():
        (odd / f.name).write_bytes(f.read_bytes())
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neox"}))
    with pytest.raises(ConfigError, match=r"model type 'gpt_neox' is not one .* supported: Llama 2/3, SmolLM2, "
                                          r"Mistral .* Qwen2/2.5 .* Qwen3 .* Gemma 2 .* Gemma 3 .* Phi-3"):
        export(ExportConfig(model=str(odd), to="gguf", output=str(tmp_path / "x")))
    with pytest.raises(ConfigError, match="quantized by --gguf-type"):
        load(ExportConfig, ["--model", "m", "--to", "gguf", "--quant", "bnb4"])
    with pytest.raises(ConfigError, match="to: ollama needs the adapter merged"):
        load(ExportConfig, ["--adapters", "a", "--to", "ollama", "--merge-lora", "false"])
    # a template that prints a turn differently by the conversation's length has no fixed-piece Ollama TEMPLATE
    moving = tmp_path / "moving"
    moving.mkdir()
    for f in (lora_run / "final").iterdir():
        (moving / f.name).write_bytes(f.read_bytes())
    (moving / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if loop.first and messages|length > 3 %}[LONG CHAT]{% endif %}"
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(TemplateError, match="differently by its position"):
        export(ExportConfig(adapters=str(moving), to="ollama", output=str(tmp_path / "y")))
    assert not (tmp_path / "y").exists()
