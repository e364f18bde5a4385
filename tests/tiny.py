"""Tiny random-weight models built from configs in the tests (2 layers, hidden 64, head_dim 32), with the
embedded SmolLM2 tokenizer (49k vocab, ChatML template), so tests run on CPU in seconds."""

from __future__ import annotations

import os
from pathlib import Path


def make_tiny_model(folder: Path, family: str = "llama", seed: int = 0, **config) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config

    from tunesmith.models.embedded import prepared_folder

    # TUNESMITH_TEST_TOKENIZER: a folder with the SmolLM2 tokenizer files, for machines without the embedded model.
    tokenizer = AutoTokenizer.from_pretrained(os.environ.get("TUNESMITH_TEST_TOKENIZER") or prepared_folder())
    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=2048,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    common.update(config)  # e.g. num_key_value_heads=2, which tensor parallel over 2 ranks needs
    config = LlamaConfig(**common) if family == "llama" else Qwen2Config(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def untie_head(folder: Path, seed: int = 1, std: float = 0.5, echo: bool = False) -> Path:
    """The model in `folder` saved again with its output head untied and re-drawn: with tied embeddings a random
    model greedily repeats its last input token ("\\n\\n\\n..."), which lets equality tests pass for the wrong reason;
    with this head its greedy answers vary with the prompt. `echo`: the head is the embeddings plus noise of `std`
    (0.07: runs of one repeated token that now and then switch, "Causes dependent obj obj obj ...", what prompt
    lookup speculation accepts and rejects, as in a real model copying text)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.config.tie_word_embeddings = False
    torch.manual_seed(seed)
    embeddings = model.model.embed_tokens.weight.data.clone()
    model.lm_head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
    torch.nn.init.normal_(model.lm_head.weight, std=std)
    if echo:
        model.lm_head.weight.data += embeddings
    model.save_pretrained(folder)
    return folder


def make_tiny_encoder(folder: Path, task: str = "embedding", labels: list[str] | None = None, seed: int = 0,
                      head_std: float = 1.0) -> Path:
    """A random 2-layer BERT (hidden 64) with the shipped all-MiniLM-L6-v2's WordPiece tokenizer, saved as what
    `tunesmith sft --task TASK` starts from or serves: a sentence-transformers embedding folder (mean pooling +
    Normalize), a CrossEncoder folder (one score), or a sequence classifier with `labels`. head_std spreads the random
    head's scores, so rankings by them are not ties."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    from tunesmith.models.encoders import packaged_folder

    tokenizer = AutoTokenizer.from_pretrained(packaged_folder("all-minilm-l6-v2"))
    labels = labels or (["score"] if task == "reranker" else ["no", "yes"])
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=256, id2label=dict(enumerate(labels)),
                        label2id={n: i for i, n in enumerate(labels)})
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    if task == "embedding":
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.base.modules import Normalize, Transformer
        from sentence_transformers.sentence_transformer.modules import Pooling

        base = folder.with_name(folder.name + "-bert")
        BertModel(config).save_pretrained(base)
        tokenizer.save_pretrained(base)
        modules = [Transformer(str(base)), Pooling(64, pooling_mode="mean"), Normalize()]
        SentenceTransformer(modules=modules, device="cpu").save(str(folder))
        return folder
    model = BertForSequenceClassification(config)
    torch.nn.init.normal_(model.classifier.weight, std=head_std)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if task == "reranker":  # a CrossEncoder folder (config_sentence_transformers.json says so)
        from sentence_transformers import CrossEncoder

        CrossEncoder(str(folder), device="cpu").save(str(folder))
    return folder


def make_tiny_adapter(folder: Path, base: Path, seed: int = 0) -> Path:
    """A LoRA adapter (rank 4 on q/v, random B so it changes the answers) for a tiny model, saved as a run's final/:
    adapter weights, the tokenizer and the base recorded in adapter_config.json."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    folder.mkdir(parents=True, exist_ok=True)
    peft.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder
