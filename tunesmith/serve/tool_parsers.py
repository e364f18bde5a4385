"""Find tool calls in an answer's text, in the formats chat templates teach their models.

    calls = parse_tool_calls(text, tool_names={"get_weather"})   # None: plain text
    calls.content, calls.calls[0].name, calls.calls[0].arguments  # arguments: JSON text, as OpenAI returns it

- hermes (Qwen2.5, Qwen3, Hermes, many fine-tunes): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
  one block per call; text before the first block is the message content.
- llama3_json (Llama 3.1 to 3.3): the whole answer is a JSON object `{"name": ..., "parameters": {...}}` (several
  joined by `;`), optionally after `<|python_tag|>`. A bare JSON object is also a plausible plain answer, so it
  counts as a call only when its name is one of the request's tools.
- qwen3_xml (Qwen3.5, Qwen3-Coder): `<tool_call>` around `<function=NAME>` and `<parameter=KEY>` blocks.
- mistral (Mistral Nemo, v3 templates): `[TOOL_CALLS][{"name": ..., "arguments": {...}}]`; the tag is a control
  token the decoded text drops, so a bare JSON list counts only when its names are the request's tools.
- mistral_v11 (Mistral-Small 3.x, Magistral): `[TOOL_CALLS]NAME[CALL_ID]ID[ARGS]{...}` per call; every tag is a
  control token, so the decoded text is `NAMEID{...}`: a call only when NAME is one of the request's tools and the
  JSON object ends the text (or the next call starts).
- deepseek_v31 (DeepSeek-V3.1; V3's form with `function` and a ```json fence too):
  `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>`; these
  markers are not special tokens in DeepSeek's tokenizer, so they stay in the text.
- gpt_oss (harmony): `<|start|>assistant to=functions.NAME<|channel|>commentary json<|message|>{...}<|call|>`; the
  tags are special tokens, so the decoded text is ` to=functions.NAMEcommentary json{...}`; `to=functions.` finds it.
  A call turn has no final channel, so its content is None. (<|call|> ends the turn: Template's stop tokens.)
- granite (Granite 3.x): `<|tool_call|>[{"name": ..., "arguments": {...}}]`, the tag special, so a bare JSON list
  whose names are the request's tools (Granite's template ignores `tool_calls`: Template writes them so).
Mistral's templates need 9-character alphanumeric call ids in later turns: their parsers return such ids.
models/families.py names each family's format; tests/models/test_families.py reads each family's trained call back.

A parser is a plain function registered by name; parse_tool_calls tries them in order. While streaming,
`call_start(text, tool_names)` says from where the text may be a call, so chat.py holds that part back until the end.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class ParsedCall:
    name: str
    arguments: str  # JSON text
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


@dataclass
class ParsedAnswer:
    content: str | None  # text outside the calls; None when there is none
    calls: list[ParsedCall]


Parser = Callable[[str, set[str]], "ParsedAnswer | None"]
Start = Callable[[str, set[str]], "int | None"]  # (text so far, the request's tool names)
TOOL_PARSERS: dict[str, tuple[Parser, Start]] = {}


def register_tool_parser(name: str, start: Start) -> Callable[[Parser], Parser]:
    def add(fn: Parser) -> Parser:
        TOOL_PARSERS[name] = (fn, start)
        return fn

    return add


def parse_tool_calls(text: str, tool_names: set[str]) -> ParsedAnswer | None:
    """The calls in `text` by the first parser that finds any, or None when the answer is plain text."""
    for parse, _ in TOOL_PARSERS.values():
        found = parse(text, tool_names)
        if found is not None and found.calls:
            return found
    return None


def call_start(text: str, tool_names: set[str] | frozenset[str] = frozenset()) -> int | None:
    """Where a tool call may begin in a partial answer (None: all of it is plain text so far)."""
    starts = [s for _, start in TOOL_PARSERS.values() if (s := start(text, set(tool_names))) is not None]
    return min(starts, default=None)


def _arguments(value: object) -> str | None:
    """OpenAI returns arguments as JSON text; models write an object (or, sometimes, already a JSON string)."""
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str):
        try:
            return value if isinstance(json.loads(value), dict) else None
        except json.JSONDecodeError:
            return None
    return None


def _call(obj: object, names: set[str] | None) -> ParsedCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    if names is not None and obj["name"] not in names:
        return None
    args = _arguments(obj.get("arguments", obj.get("parameters", {})))
    return ParsedCall(obj["name"], args) if args is not None else None


def _partial_suffix(text: str, marker: str) -> int | None:
    """Index where `text` ends with the first characters of `marker` (a tag still arriving), else None."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return len(text) - k
    return None


# -----------------------------------------------------------------------------
# Hermes / Qwen: <tool_call>{...}</tool_call>

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
HERMES_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def _tag_start(text: str, tag: str) -> int | None:
    """Where `tag` opens in the text, or a tail of it that may still become the tag."""
    at = text.find(tag)
    return at if at >= 0 else _partial_suffix(text, tag)


def _hermes_start(text: str, names: set[str]) -> int | None:
    return _tag_start(text, HERMES_OPEN)


@register_tool_parser("hermes", _hermes_start)
def parse_hermes(text: str, tool_names: set[str]) -> ParsedAnswer | None:
    at = text.find(HERMES_OPEN)
    if at < 0:
        return None
    calls = []
    for body in HERMES_BLOCK.findall(text[at:]):
        try:
            call = _call(json.loads(body), None)  # tagged: the model meant a call, whatever the name
        except json.JSONDecodeError:
            return None  # a broken call is returned as text, for the client to see
        if call is None:
            return None
        calls.append(call)
    content = text[:at].strip()
    return ParsedAnswer(content or None, calls)


# -----------------------------------------------------------------------------
# Llama 3: the whole answer is {"name": ..., "parameters": {...}}, maybe after <|python_tag|>

PYTHON_TAG = "<|python_tag|>"


def _llama_start(text: str, names: set[str]) -> int | None:
    body = text.lstrip()
    if not body or body.startswith(("{", PYTHON_TAG)) or PYTHON_TAG.startswith(body):
        return 0  # nothing but whitespace yet, or it opens like a call: wait and see
    return None


@register_tool_parser("llama3_json", _llama_start)
def parse_llama3_json(text: str, tool_names: set[str]) -> ParsedAnswer | None:
    body = text.strip().removeprefix(PYTHON_TAG).strip()
    if not body.startswith("{"):
        return None
    decoder, calls, pos = json.JSONDecoder(), [], 0
    while pos < len(body):
        try:
            obj, pos = decoder.raw_decode(body, pos)
        except json.JSONDecodeError:
            return None
        call = _call(obj, tool_names)
        if call is None:
            return None
        calls.append(call)
        pos = len(body) - len(body[pos:].lstrip().removeprefix(";").lstrip())
    return ParsedAnswer(None, calls)


# -----------------------------------------------------------------------------
# Qwen3.5 / Qwen3-Coder: <tool_call>\n<function=NAME>\n<parameter=KEY>\nVALUE\n</parameter>\n</function>\n</tool_call>

XML_FUNCTION = re.compile(r"<function=([^>\n]+)>(.*?)(?:</function>|$)", re.DOTALL)
XML_PARAMETER = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.DOTALL)


def _xml_value(text: str) -> object:
    """A parameter's value: JSON when it parses (numbers, objects), else the text itself (the template writes
    strings bare)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@register_tool_parser("qwen3_xml", _hermes_start)
def parse_qwen3_xml(text: str, tool_names: set[str]) -> ParsedAnswer | None:
    at = text.find(HERMES_OPEN)
    if at < 0 or "<function=" not in text[at:]:
        return None
    calls = [ParsedCall(name.strip(), json.dumps({k.strip(): _xml_value(v) for k, v in XML_PARAMETER.findall(body)},
                                                 ensure_ascii=False))
             for name, body in XML_FUNCTION.findall(text[at:])]
    return ParsedAnswer(text[:at].strip() or None, calls) if calls else None


# -----------------------------------------------------------------------------
# Mistral (Nemo and earlier v3 templates): [TOOL_CALLS][{"name": ..., "arguments": {...}, "id": ...}]. [TOOL_CALLS]
# is a control token, so the decoded answer is the bare JSON list: a call only when its names are the request's tools.

MISTRAL_TAG = "[TOOL_CALLS]"


def _tagged_list_start(tag: str):
    """The start finder of a family whose calls are a JSON list after `tag` (often dropped in decoding)."""
    def start(text: str, names: set[str]) -> int | None:
        body = text.lstrip()
        return 0 if body.startswith(tag) or tag.startswith(body) or body.startswith("[{") else None
    return start


def _tagged_list_calls(text: str, tag: str, tool_names: set[str]) -> tuple[list[ParsedCall], list] | None:
    """The calls of a JSON list after `tag`, with the list's items; None unless every item names one of the tools."""
    body = text.strip().removeprefix(tag).strip()
    if not body.startswith("["):
        return None
    try:
        items = json.loads(body)
    except json.JSONDecodeError:
        return None
    calls = [_call(item, tool_names) for item in items] if isinstance(items, list) else [None]
    if not calls or any(c is None for c in calls):
        return None
    return calls, items  # type: ignore[return-value]


@register_tool_parser("mistral", _tagged_list_start(MISTRAL_TAG))
def parse_mistral(text: str, tool_names: set[str]) -> ParsedAnswer | None:
    found = _tagged_list_calls(text, MISTRAL_TAG, tool_names)
    if found is None:
        return None
    calls, items = found
    for call, item in zip(calls, items):  # the id the model wrote, else one Mistral's template accepts back
        call.id = item["id"] if _is_mistral_id(item.get("id")) else _mistral_id()  # type: ignore[union-attr]
    return ParsedAnswer(None, calls)  # type: ignore[arg-type]


def _mistral_id() -> str:
    return uuid.uuid4().hex[:9]


def _is_mistral_id(value: object) -> bool:
    return isinstance(value, str) and len(value) == 9 and value.isalnum()


# -----------------------------------------------------------------------------
# Mistral v11 (Mistral-Small 3.x): [TOOL_CALLS]NAME[CALL_ID]ID[ARGS]{...}, decoded without the tags: NAMEID{...}

V11_TAGS = ("[TOOL_CALLS]", "[CALL_ID]", "[ARGS]")


def _v11_start(text: str, names: set[str]) -> int | None:
    body = text.lstrip()
    if body.startswith(MISTRAL_TAG) or MISTRAL_TAG.startswith(body):
        return 0
    if any(body.startswith(n) or n.startswith(body) for n in names):
        return 0  # a tool's name (or the start of one) opens the answer: wait for what follows it
    return None


@register_tool_parser("mistral_v11", _v11_start)
def parse_mistral_v11(text: str, tool_names: set[str]) -> ParsedAnswer | None:
    body = text.strip()
    if body.startswith(MISTRAL_TAG):
        parts = [p for p in body.split(MISTRAL_TAG) if p.strip()]
    else:
        parts = [body]  # tags dropped: one or more NAMEID{...} back to back
    decoder, calls = json.JSONDecoder(), []
    for part in parts:
        pos = 0
        while pos < len(part):
            name = max((n for n in tool_names if part.startswith(n, pos)), key=len, default=None)
            if name is None:
                return None
            pos += len(name)
            call_id = None
            if part.startswith("[CALL_ID]", pos):
                pos += len("[CALL_ID]")
            brace = part.find("{", pos)
            if brace < 0:
                return None
            between = part[pos:brace].removesuffix("[ARGS]").strip()
            if between:
                if not _is_mistral_id(between):
                    return None
                call_id = between
            try:
                args, pos = decoder.raw_decode(part, brace)
            except json.JSONDecodeError:
                return None
            if not isinstance(args, dict):
                return None
            calls.append(ParsedCall(name, json.dumps(args, ensure_ascii=False), call_id or _mistral_id()))
            pos = len(part) - len(part[pos:].lstrip())
    return ParsedAnswer(None, calls) if calls else None


# -----------------------------------------------------------------------------
# DeepSeek-V3.1: <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>
# (V3-0324: <｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\n{...}\n```<｜tool▁call▁end｜>)

DS_CALLS_BEGIN, DS_CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
DS_CALL = re.compile(r"<｜tool▁call▁begin｜>(.*?)<｜tool▁sep｜>(.*?)(?:<｜tool▁call▁end｜>|$)", re.DOTALL)
DS_FENCE = re.compile(r"^\s*(.*?)\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def _deepseek_start(text: str, names: set[str]) -> int | None:
    return _tag_start(text, DS_CALLS_BEGIN)


@register_tool_parser("deepseek_v31", _deepseek_start)
def parse_deepseek_v31(text: str, tool_names: set[str]) -> ParsedAnswer | None:
    at = text.find(DS_CALLS_BEGIN)
    if at < 0:
        return None
    calls = []
    for head, body in DS_CALL.findall(text[at:].split(DS_CALLS_END)[0]):
        name = head.strip()
        if name == "function" and (fenced := DS_FENCE.match(body)):  # V3: the name is in the body, then a fence
            name, body = fenced.groups()
        try:
            call = _call({"name": name.strip(), "arguments": json.loads(body)}, None)
        except json.JSONDecodeError:
            return None
        if call is None:
            return None
        calls.append(call)
    return ParsedAnswer(text[:at].strip() or None, calls) if calls else None


# -----------------------------------------------------------------------------
# gpt-oss (harmony): <|start|>assistant to=functions.NAME<|channel|>commentary json<|message|>{...}<|call|>

HARMONY_TO = "to=functions."
HARMONY_TAGS = re.compile(r"<\|(?:channel|constrain|message|start|end)\|>")


def _harmony_start(text: str, names: set[str]) -> int | None:
    body = text.lstrip()
    if body and ("commentary to=".startswith(body) or body.startswith("commentary to=")):
        return 0  # the channel's name before the recipient: part of the call, not content
    return _tag_start(text, HARMONY_TO)


@register_tool_parser("gpt_oss", _harmony_start)
def parse_gpt_oss(text: str, tool_names: set[str]) -> ParsedAnswer | None:
    body = HARMONY_TAGS.sub(" ", text)  # the same text whether the engine kept the tags or dropped them
    at = body.find(HARMONY_TO)
    if at < 0:
        return None
    rest = body[at + len(HARMONY_TO):]
    # the tags' absence glues the name to "commentary" (NAMEcommentary json{...}): the request's names decide
    name = max((n for n in tool_names if rest.startswith(n)), key=len, default=None)
    if name is None:
        match = re.match(r"[\w.\-]+?(?=commentary|\s|json|\{)", rest)
        name = match.group(0) if match else None
    if not name:
        return None
    rest = re.sub(r"^\s*(?:commentary)?\s*(?:json)?\s*", "", rest[len(name):])  # the channel, the content type
    try:
        args, end = json.JSONDecoder().raw_decode(rest)
    except json.JSONDecodeError:
        return None
    if not isinstance(args, dict) or rest[end:].strip().removeprefix("<|call|>").strip():
        return None
    return ParsedAnswer(None, [ParsedCall(name, json.dumps(args, ensure_ascii=False))])


# -----------------------------------------------------------------------------
# Granite 3.x: <|tool_call|>[{"name": ..., "arguments": {...}}], the tag dropped in decoding: the bare list

GRANITE_TAG = "<|tool_call|>"


@register_tool_parser("granite", _tagged_list_start(GRANITE_TAG))
def parse_granite(text: str, tool_names: set[str]) -> ParsedAnswer | None:
    found = _tagged_list_calls(text, GRANITE_TAG, tool_names)
    return ParsedAnswer(None, found[0]) if found else None
