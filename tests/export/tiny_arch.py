"""Tiny models of each architecture tunesmith writes as GGUF (tests/export/test_gguf.py)."""

import json

# -----------------------------------------------------------------------------
# GGUF: tiny models of each architecture tunesmith writes, on a small vocabulary (the first 1024 ids of SmolLM2's BPE:
# its specials, bytes and first merges), so that reading a GGUF back (transformers parses every token) takes a second


def small_tokenizer(pattern: str | None = None, size: int = 1024):
    """SmolLM2's byte-level BPE cut to `size` ids, with its ChatML template; `pattern`: a Split rule before the byte
    mapping (as Qwen's tokenizer.json has) instead of GPT-2's built-in one."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from tunesmith.models.embedded import prepared_folder

    base = AutoTokenizer.from_pretrained(prepared_folder())
    spec = json.loads(base.backend_tokenizer.to_str())
    vocab = {t: i for t, i in spec["model"]["vocab"].items() if i < size}
    spec["model"]["vocab"] = vocab
    spec["model"]["merges"] = [m for m in spec["model"]["merges"] if "".join(m) in vocab]
    if pattern:
        spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token=base.bos_token,
                                  eos_token=base.eos_token, pad_token=base.pad_token, unk_token=base.unk_token)
    tok.chat_template = base.chat_template
    return tok


ARCH_CONFIGS = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"tie_word_embeddings": False, "sliding_window": None}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 128}),  # transformers reads no head_dim from a qwen3 GGUF: its default 128
    # fields transformers' GGUF reader does not take from the file stay at the config's defaults (softcapping...)
    "gemma2": ("Gemma2Config", {}),
    "gemma3_text": ("Gemma3TextConfig", {}),
    "phi3": ("Phi3Config", {"tie_word_embeddings": False}),
}


def make_arch_model(folder, model_type: str, pattern: str | None = None, seed: int = 0):
    import torch
    import transformers

    tok = small_tokenizer(pattern)
    name, extra = ARCH_CONFIGS[model_type]
    common = {"vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 2048,
              "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
              "tie_word_embeddings": True}
    if model_type != "phi3":  # Phi3Config derives it
        common["head_dim"] = 32
    config = getattr(transformers, name)(**{**common, **extra})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # norms away from their init (1 or 0), so a wrong +1 shift or a skipped norm shows
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
