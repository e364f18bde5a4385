"""Packing keeps samples apart; tokenization is cached by content."""


import torch

from tiny import make_tiny_model
from tunesmith.data.rows import Conversation
from tunesmith.templates import Template
from tunesmith.train import tokenize


def test_packed_samples_do_not_attend_to_each_other(tmp_path):
    """Two samples concatenated with restarting position ids (what padding-free packing feeds the model) give the
    same logits as each sample alone."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    folder = make_tiny_model(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").eval()
    a, b = list(range(100, 117)), list(range(300, 311))
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([{"input_ids": a}, {"input_ids": b}])
    assert batch["position_ids"].tolist() == [list(range(17)) + list(range(11))]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():  # exactly what SFTTrainer.compute_loss sends: the collator's keys, use_cache=False
        packed = model(**inputs, use_cache=False).logits[0]
        alone_a = model(input_ids=torch.tensor([a])).logits[0]
        alone_b = model(input_ids=torch.tensor([b])).logits[0]
    assert torch.allclose(packed[:17], alone_a, atol=1e-5)
    assert torch.allclose(packed[17:], alone_b, atol=1e-5)  # would differ if b could see a


def test_tokenization_is_cached_by_content(tmp_path, monkeypatch):
    from real_tokenizers import smollm2_tokenizer

    # the tokenizer first: from the shared cache, else the embedded model's one-time conversion runs in tmp_path again
    template = Template(smollm2_tokenizer())
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    rows = [Conversation([{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]) for i in range(3)]
    calls = []
    real_render = template.render
    monkeypatch.setattr(template, "render", lambda *a, **k: calls.append(1) or real_render(*a, **k))
    first, _ = tokenize.tokenize_sft(rows, template, "assistant", 512)
    second, _ = tokenize.tokenize_sft(rows, template, "assistant", 512)
    assert len(calls) == 3 and first["input_ids"] == second["input_ids"]  # the second run read the cache
    rows[0].messages[1]["content"] = "changed"
    tokenize.tokenize_sft(rows, template, "assistant", 512)
    assert len(calls) == 6  # new content, new key
    assert len(list((tmp_path / "cache" / "tokenized").glob("*.json"))) == 2
