"""Structured output: OpenAI's `response_format` (json_object, json_schema) as a grammar that masks the logits at every
step, so the answer is JSON that the schema accepts (llguidance, the grammar engine vLLM, SGLang and llama.cpp use).

    grammar = compile_response_format({"type": "json_schema", "json_schema": {"name": "p", "schema": {...}}})
    processor = GrammarProcessor(grammar, template, vocab_size=model.config.vocab_size)
    model.generate(..., logits_processor=[processor])          # transformers_engine.py's constrained path

Why llguidance: no dependencies (one abi3 wheel), so it installs beside our pinned torch and transformers as is;
xgrammar 0.2.8 pulls triton and apache-tvm-ffi, outlines 1.3.3 pulls outlines_core, jsonschema, pillow and more,
lm-format-enforcer is pure Python and slower per token. Its JSON Schema coverage is the widest of the four.

The grammar is compact JSON (no free whitespace), so a model cannot spend its tokens on blank space. It allows the
end-of-turn token only once the JSON is complete. An answer cut by max_tokens (finish_reason "length") can still be
unfinished JSON, as OpenAI documents for its own structured outputs: bound strings and numbers in the schema
(maxLength, maximum, enum, maxItems) when every answer must parse.
"""

from __future__ import annotations

import json
import threading
from typing import Any

JSON_OPTIONS = {"whitespace_flexible": False}
_TOKENIZERS: dict[tuple[int, int, int], Any] = {}  # (tokenizer id, end token, vocab) -> llguidance tokenizer
_LOCK = threading.Lock()


class GrammarError(ValueError):
    """The response_format cannot be turned into a grammar (the server answers 400 naming it)."""


def compile_response_format(response_format: dict) -> str | None:
    """llguidance's grammar for an OpenAI response_format, None for text. GrammarError for a schema it cannot take."""
    import llguidance

    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "tool_call":  # a forced tool call, compiled by serve/chat.py (infer/tool_grammar.py)
        return response_format["grammar"]
    if kind == "json_object":
        schema: Any = {"type": "object"}
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), (dict, bool)):
            raise GrammarError("json_schema: expected {\"name\": ..., \"schema\": {...}, \"strict\": true}")
        schema = spec.get("schema", {})  # OpenAI: a missing schema is any JSON
    else:
        raise GrammarError(f"type: {kind!r} is not one of text, json_object, json_schema")
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=JSON_OPTIONS)
    except (ValueError, TypeError) as err:
        raise GrammarError(f"json_schema.schema: {err}") from None
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:  # a schema llguidance cannot take (an unknown keyword in strict mode, a broken $ref, ...)
        raise GrammarError(f"json_schema.schema: {messages[0]}")
    return grammar


def lltokenizer(template: Any, vocab_size: int) -> Any:
    """llguidance's view of a served model's tokenizer (built once: about a second for a 150k vocabulary), with the
    template's end-of-turn token as the one that ends a complete answer."""
    import llguidance.hf

    tokenizer, end = template.tokenizer, template.stop_token_ids[0]
    key = (id(tokenizer), end, vocab_size)
    with _LOCK:
        if key not in _TOKENIZERS:
            _TOKENIZERS[key] = llguidance.hf.from_tokenizer(tokenizer, n_vocab=max(vocab_size, len(tokenizer)),
                                                            eos_token=end)
        return _TOKENIZERS[key]


class GrammarProcessor:
    """A transformers LogitsProcessor for one sequence: consumes the token sampled last, then allows only the
    tokens the grammar accepts next (everything else to -inf)."""

    def __init__(self, grammar: str, template: Any, vocab_size: int):
        import llguidance

        self.matcher = llguidance.LLMatcher(lltokenizer(template, vocab_size), grammar)
        if self.matcher.is_error():
            raise GrammarError(self.matcher.get_error())
        self.length: int | None = None  # the sequence length at the previous call

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.length is not None:
            for token in input_ids[0, self.length:].tolist():
                if not self.matcher.consume_token(token):
                    raise RuntimeError(f"the grammar refused token {token}: {self.matcher.get_error()}")
        self.length = input_ids.shape[1]
        words = torch.frombuffer(bytearray(self.matcher.compute_bitmask()), dtype=torch.int32)
        allowed = ((words.unsqueeze(1) >> torch.arange(32, dtype=torch.int32)) & 1).flatten().bool()
        vocab = scores.shape[-1]
        if allowed.numel() < vocab:
            allowed = torch.cat([allowed, torch.zeros(vocab - allowed.numel(), dtype=torch.bool)])
        return scores.masked_fill(~allowed[:vocab].to(scores.device), float("-inf"))
