"""Tiny random-weight models built from configs in the tests (2 layers, hidden 64, head_dim 32), with the
embedded SmolLM2 tokenizer (49k vocab, ChatML template), so tests run on CPU in seconds."""

from __future__ import annotations

import os
from pathlib import Path


def make_tiny_model(folder: Path, family: str = "llama", seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config

    from tunesmith.models.embedded import prepared_folder

    # TUNESMITH_TEST_TOKENIZER: a folder with the SmolLM2 tokenizer files, for machines without the embedded model.
    tokenizer = AutoTokenizer.from_pretrained(os.environ.get("TUNESMITH_TEST_TOKENIZER") or prepared_folder())
    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=2048,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    config = LlamaConfig(**common) if family == "llama" else Qwen2Config(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
