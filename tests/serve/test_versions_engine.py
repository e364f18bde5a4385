"""Versions on the real transformers engine (tiny random model, two random LoRA adapters): they share one base in
memory (the same weight tensors), each answers as its adapter merged into the base answers, a version loaded while
serving reads nothing from disk when its base is in memory, and removing one leaves the base and the others."""

import pytest
from tiny import make_tiny_adapter

from tunesmith.infer import SamplingParams, load_engine

PROMPT = [[{"role": "user", "content": "Tell me about the river"}]]
GREEDY = SamplingParams(max_tokens=8, temperature=0.0)


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return [make_tiny_adapter(root / name / "final", tiny_model, seed=k) for k, name in enumerate(("a", "b"))]


def answer(engine, model):
    return engine.chat(PROMPT, GREEDY, model=model)[0].choices[0].text


def merged_answer(engine, base, adapter):
    """What the adapter merged into its base answers greedily (plain generate, no engine), from the same prompt."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(adapter))
    template = engine.template_for("prd:v1")
    ids = template.render_prompt(PROMPT[0])
    with torch.inference_mode():
        out = model.merge_and_unload().generate(torch.tensor([ids]), max_new_tokens=GREEDY.max_tokens, do_sample=False,
                                                eos_token_id=template.stop_token_ids)
    return template.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)


def test_versions_share_the_base_and_answer_as_their_merged_adapters(tiny_model, adapters):
    a, b = adapters
    engine = load_engine("transformers", device="cpu", dtype="float32", kv_cache_gib=0.25,
                         versions={"prd:v1": (str(a), None), "prd:v2": (str(b), None)})
    try:
        assert engine.model_names() == ["prd:v1", "prd:v2"] and engine.loads == 1  # one base read, no other model
        (base,) = engine.bases.values()
        weights = base.model.embed_tokens.weight.data_ptr()
        for name in ("prd:v1", "prd:v2"):
            view = engine.served[name].model
            assert view.model.embed_tokens.weight.data_ptr() == weights
            q = view.model.layers[0].self_attn.q_proj
            assert q.base_layer.weight.data_ptr() == base.model.layers[0].self_attn.q_proj.weight.data_ptr()
        assert not hasattr(base.model.layers[0].self_attn.q_proj, "lora_A")  # the base itself has no adapter
        expected = {"prd:v1": merged_answer(engine, tiny_model, a), "prd:v2": merged_answer(engine, tiny_model, b)}
        assert expected["prd:v1"] != expected["prd:v2"]  # the adapters do change the answers
        assert {name: answer(engine, name) for name in expected} == expected

        engine.add_model("prd:v3", str(a))  # while serving: the base is in memory, nothing read from disk
        assert engine.loads == 1 and "prd:v3" in engine.model_names()
        assert engine.served["prd:v3"].model.model.embed_tokens.weight.data_ptr() == weights
        engine.remove_model("prd:v2")
        assert engine.model_names() == ["prd:v1", "prd:v3"]
        assert answer(engine, "prd:v1") == expected["prd:v1"]  # the others serve on
    finally:
        engine.shutdown()
