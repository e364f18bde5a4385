"""Forced tool calls, constrained to the declared schemas: OpenAI's `tool_choice: "required"` (one call to any of the
tools) and `{"type": "function", "function": {"name": N}}` (one call to N), as a grammar on the logits.

    frame = call_frame(template)            # how this model's chat template writes one call; None: it writes none
    grammar = tool_call_grammar(frame, tools, "get_weather")   # or None for "required"
    GenerationRequest(..., response_format={"type": "tool_call", "grammar": grammar})   # infer/grammar.py runs it

The frame is read from the served model's own chat template, the one it was trained with: an assistant turn calling a
probe tool is rendered, and the text before the call's JSON object, the object's keys for the name and the arguments,
and the text after it up to the end of turn are what the grammar writes around a call whose arguments follow the
tool's `parameters` schema. So the forced answer is the text training taught (hermes' `<tool_call>` blocks, Llama
3's bare `{"name": ..., "parameters": ...}`, Mistral's `[TOOL_CALLS][...]` list), and the server's tool-call parser
reads it back. Added tokens in the frame (Qwen's <tool_call>, Mistral's [TOOL_CALLS]) are written as those tokens. Templates whose call
is not a JSON object holding the name and the arguments (Qwen3.5's XML, DeepSeek's and gpt-oss' tags around a bare
name) have no frame: forcing a call there is refused by the server, naming the model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from tunesmith.infer.grammar import JSON_OPTIONS, GrammarError

PROBE_NAME = "tunesmith_probe_tool"
PROBE_ARGUMENTS = {"probe_key": "probe_value"}
PROBE_ID = "abcdefghi"  # 9 alphanumerics: the form Mistral's templates require of call ids
PROBE_TOOLS = [{"type": "function", "function": {"name": PROBE_NAME, "description": "Probe.", "parameters": {
    "type": "object", "properties": {"probe_key": {"type": "string"}}, "required": ["probe_key"]}}}]


@dataclass(frozen=True)
class CallFrame:
    before: str  # what the template writes between the generation prompt and the call's JSON object
    after: str  # after the object, up to the end of turn (which the grammar leaves to the model's stop token)
    name_key: str  # the object's key holding the function name ("name")
    arguments_key: str  # and the one holding its arguments ("arguments", Llama 3's "parameters")
    arguments_as_text: bool  # the arguments are a JSON string inside the object, not an object
    key_separator: str = ": "  # the template's JSON separators (Jinja's tojson writes ", " and ": ")
    item_separator: str = ", "
    keys: tuple[str, ...] = ()  # every key of the object in the template's order (Mistral adds a call "id")


_FRAMES: dict[int, tuple[Any, CallFrame | None]] = {}  # id(template) -> (template, its frame): read once per model


def call_frame(template: Any) -> CallFrame | None:
    """How `template` writes one tool call, or None where it writes no call tunesmith can constrain."""
    cached = _FRAMES.get(id(template))
    if cached is None or cached[0] is not template:
        cached = _FRAMES[id(template)] = (template, _read_frame(template))
    return cached[1]


def _read_frame(template: Any) -> CallFrame | None:
    from tunesmith.errors import TemplateError

    ask = [{"role": "user", "content": "Probe question?"}]
    call = {"id": PROBE_ID, "type": "function",
            "function": {"name": PROBE_NAME, "arguments": PROBE_ARGUMENTS}}
    try:
        prompt = template.render_text(ask, add_generation_prompt=True, tools=PROBE_TOOLS)
        through = template.render_text(ask + [{"role": "assistant", "content": "", "tool_calls": [call]}],
                                       tools=PROBE_TOOLS)
    except TemplateError:
        return None
    if not through.startswith(prompt):
        return None
    answer = through[len(prompt):]
    found = _call_object(answer)
    if found is None:
        return None
    start, end, name_key, arguments_key, as_text, keys = found
    if any(k not in (name_key, arguments_key) and k != "id" for k in keys):
        return None  # a key the grammar would not know how to fill
    after = answer[end:]
    if template.end_of_turn and template.end_of_turn in after:
        after = after[:after.index(template.end_of_turn)]
    written = answer[start:end]  # the separators as the template writes them, so the forced call reads the same
    key_sep = re.search(re.escape(json.dumps(name_key)) + r"(\s*:\s*)" + re.escape(json.dumps(PROBE_NAME)), written)
    item_sep = re.search(re.escape(json.dumps(PROBE_NAME)) + r"(\s*,\s*)", written)
    after = "" if not after.strip() else after  # only the line break before the end of turn: the stop token's job
    return CallFrame(answer[:start], after, name_key, arguments_key, as_text,
                     key_sep.group(1) if key_sep else ": ", item_sep.group(1) if item_sep else ", ", tuple(keys))


def _call_object(text: str) -> tuple[int, int, str, str, bool, list[str]] | None:
    """(start, end, name key, arguments key, arguments as text, all keys) of the first JSON object in `text` that
    holds the probe's name and arguments."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, end = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if not isinstance(value, dict):
            continue
        name_key = next((k for k, v in value.items() if v == PROBE_NAME), None)
        for key, v in value.items():
            as_text = isinstance(v, str) and _loads(v) == PROBE_ARGUMENTS
            if name_key and key != name_key and (v == PROBE_ARGUMENTS or as_text):
                return match.start(), end, name_key, key, as_text, list(value)
    return None


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def tool_call_grammar(frame: CallFrame, tools: list[dict], name: str | None, tokenizer: Any) -> str:
    """llguidance's grammar (Lark with embedded JSON Schema) for one call: to `name`, or to any of `tools` (None).
    The tokenizer's added tokens in the frame (<tool_call>, [TOOL_CALLS]) are written as those single tokens, as
    training encodes them (a special one cannot be written as text at all)."""
    import llguidance

    added_tokens = {t.content: i for i, t in tokenizer.added_tokens_decoder.items()}
    functions = [t["function"] for t in tools if t.get("type", "function") == "function"]
    if name is not None:
        functions = [f for f in functions if f["name"] == name]
        if not functions:
            raise GrammarError(f"tool_choice: function {name!r} is not one of the request's tools")
    if not functions:
        raise GrammarError("tool_choice: the request declares no function tools to call")
    options = []
    for function in functions:
        parameters = function.get("parameters") or {"type": "object"}
        arguments = {"type": "string"} if frame.arguments_as_text else parameters
        fields = {frame.name_key: {"const": function["name"]}, frame.arguments_key: arguments,
                  "id": {"type": "string", "pattern": f"^[a-zA-Z0-9]{{{len(PROBE_ID)}}}$"}}
        keys = frame.keys or (frame.name_key, frame.arguments_key)
        options.append({"type": "object", "additionalProperties": False, "required": list(keys),
                        "properties": {k: fields[k] for k in keys}})
    layout = {**JSON_OPTIONS, "key_separator": frame.key_separator, "item_separator": frame.item_separator}
    schema = {**(options[0] if len(options) == 1 else {"anyOf": options}), "x-guidance": layout}
    body = " ".join(p for p in (_literal(frame.before, added_tokens), "call", _literal(frame.after, added_tokens))
                    if p)
    grammar = llguidance.grammar_from("lark", f"start: {body}\ncall: %json {json.dumps(schema)}\n")
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise GrammarError(f"tools: {messages[0]}")
    return grammar


def _literal(text: str, added_tokens: dict[str, int]) -> str:
    """`text` as Lark terms: quoted strings, and <[id]> for each added token in it."""
    if not text:
        return ""
    specials = sorted((t for t in added_tokens if t and t in text), key=len, reverse=True)
    pieces = re.split("(" + "|".join(map(re.escape, specials)) + ")", text) if specials else [text]
    terms = [f"<[{added_tokens[p]}]>" if p in added_tokens else json.dumps(p) for p in pieces if p]
    return " ".join(terms)
