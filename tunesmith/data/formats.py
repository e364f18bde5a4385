"""Detect a row's format from its columns and normalise it, reporting every problem as `file:line: field: problem`.

Formats: OpenAI `messages`; ShareGPT `conversations` (from/value); Alpaca `instruction`/`input`/`output`
(+ `system`, `history`; Dolly's `context`/`response` are its input/output); `prompt`/`response` and the usual aliases; `text` for pretraining. Images (for
vision-language models) as OpenAI content parts or an `images` column with <image> placeholders: data/vision.py.
"""

from __future__ import annotations

import json
from typing import Any

from tunesmith.data import vision
from tunesmith.data.rows import Conversation, Problem, RawRow, Text

ROLES = {"system", "user", "assistant", "tool"}
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "bot": "assistant", "model": "assistant", "function_call": "assistant", "observation": "tool", "tool": "tool",
    "function": "tool",
}
PROMPT_KEYS = ("prompt", "query", "question", "input")
RESPONSE_KEYS = ("response", "answer", "output", "completion")
ALPACA_INPUT_KEYS = ("input", "context")  # Dolly (databricks-dolly-15k) calls the input its context
TEXT_KEYS = ("text", "content")


def detect(data: dict[str, Any]) -> str | None:
    keys = set(data)
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys:
        return "alpaca"  # without an answer: a prompt (infer, grpo), its instruction and input kept together
    if any(k in keys for k in PROMPT_KEYS) and any(k in keys for k in RESPONSE_KEYS):
        return "prompt-response"
    if any(k in keys for k in TEXT_KEYS):
        return "text"
    if any(k in keys for k in PROMPT_KEYS):
        return "prompt-response"  # a prompt with no answer (+ columns such as `solution`): prompts for infer, grpo
    return None


def normalise(row: RawRow, kind: str, problems: list[Problem]) -> Conversation | Text | None:
    """kind: "sft" (needs conversations), "pt" (needs text), "prompts" (conversations whose last turn is the
    user's, for infer), or "auto". Appends to `problems` and returns None for a bad row."""
    bad = _Reporter(row, problems)
    if not isinstance(row.data, dict):
        return bad("row", f"expected a JSON object, got {type(row.data).__name__}")
    fmt = detect(row.data)
    if fmt is None and kind == "sft" and _preference_pair_for_sft(row.data, [], bad):
        return None  # chosen/rejected conversations with no prompt column (TRL's implicit prompt)
    if fmt is None:
        cols = ", ".join(sorted(row.data)) or "none"
        return bad("columns", f"format not recognised from columns ({cols}); expected messages, conversations, "
                              "instruction/output, prompt/response or text")
    if fmt == "text":
        key = next(k for k in TEXT_KEYS if k in row.data)
        value = row.data[key]
        if not isinstance(value, str):
            return bad(key, f"expected a string, got {type(value).__name__}")
        if not value.strip():
            return bad(key, "empty text")
        if kind in ("sft", "prompts"):
            return bad(key, f"a plain-text row cannot be used for {kind}; use `tunesmith pt` for raw text")
        return Text(value, row.source, row.line)
    if kind == "pt":
        return bad("text", f"continued pretraining needs a text column; this row is in {fmt} format")
    messages = {"messages": _from_messages, "sharegpt": _from_sharegpt, "alpaca": _from_alpaca,
                "prompt-response": _from_prompt_response}[fmt](row.data, bad)
    if messages is None:
        return None
    messages = vision.attach(messages, row.data, row.source, {"sharegpt": "conversations"}.get(fmt, "messages"), bad)
    if messages is None:
        return None
    if kind == "sft" and _preference_pair_for_sft(row.data, messages, bad):
        return None
    if not _check_messages(messages, kind, fmt, bad, row.data):
        return None
    tools = _json_cell(row.data.get("tools"))
    if tools not in (None, "") and (problem := _tools_problem(tools)):
        return bad(f"tools{problem[0]}", problem[1])
    extra = {k: v for k, v in row.data.items() if k not in ("messages", "conversations", "system", "tools")}
    conv = Conversation(messages, row.source, row.line, fmt, extra)
    if tools:
        conv.extra["tools"] = tools
    return conv


class _Reporter:
    def __init__(self, row: RawRow, problems: list[Problem]):
        self.row, self.problems = row, problems

    def __call__(self, field: str, problem: str) -> None:
        self.problems.append(Problem(self.row.source, self.row.line, field, problem))
        return None


def _json_cell(value: Any) -> Any:
    """A list written as JSON text, as a CSV cell (or a spreadsheet export) holds messages, conversations or tools:
    the list. Any other value as it is (a string that is no JSON list of objects stays a string; its row is reported)."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        return parsed if isinstance(parsed, list) and all(isinstance(item, dict) for item in parsed) else value
    return value


def _content(value: Any) -> str | None:
    """Strings, or OpenAI content parts [{"type": "text", "text": ...}] joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text", "")) for p in value)
    return None


def _from_messages(data: dict, bad: _Reporter) -> list[dict] | None:
    raw = _json_cell(data["messages"])
    if not isinstance(raw, list):
        return bad("messages", f"expected a list of messages, got {type(raw).__name__}")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            return bad(f"messages[{i}]", f"expected an object with role and content, got {type(m).__name__}")
        role = m.get("role")
        if role == "developer":  # OpenAI's newer name for system, as exported chat logs carry it (deploy reads it so)
            role = "system"
        if not isinstance(role, str) or role not in ROLES:
            return bad(f"messages[{i}].role", f"unknown role {role!r}; expected one of {', '.join(sorted(ROLES))}")
        raw = m.get("content") if m.get("content") is not None else ""
        content = vision.parts(raw) if vision.is_parts(raw) else _content(raw)
        if content is None:
            return bad(f"messages[{i}].content", f"expected a string, got {type(m.get('content')).__name__}")
        msg: dict[str, Any] = {"role": role, "content": content}
        if m.get("tool_calls") is not None and (problem := _tool_calls_problem(_json_cell(m["tool_calls"]))):
            return bad(f"messages[{i}].tool_calls{problem[0]}", problem[1])
        for key in ("tool_calls", "name", "tool_call_id"):
            if m.get(key) is not None:
                msg[key] = _json_cell(m[key]) if key == "tool_calls" else m[key]
        if "loss" in m:
            if not isinstance(m["loss"], bool):
                return bad(f"messages[{i}].loss", f"expected true or false, got {m['loss']!r}")
            msg["loss"] = m["loss"]
        out.append(msg)
    return out


def _tool_calls_problem(calls: Any) -> tuple[str, str] | None:
    """(where inside tool_calls, problem) for calls not in OpenAI's shape, a list of {"type": "function", "function":
    {"name": ..., "arguments": ...}} (the bare {"name", "arguments"} is read too); the chat template would fail on
    them mid-run. None when they are fine."""
    return _functions_problem(calls, "calls", "called function's name", "arguments", (dict, str),
                              "an object or a JSON string")


def _tools_problem(tools: Any) -> tuple[str, str] | None:
    """(where inside tools, problem) for tool definitions not in OpenAI's shape, a list of {"type": "function",
    "function": {"name": ..., "description": ..., "parameters": {...}}} (the bare {"name", "parameters"} is read too, as
    a JSON string in a CSV cell or LLaMA-Factory's `tools` column): the chat template would fail on them, or render
    them wrongly, mid-run. None when they are fine."""
    return _functions_problem(tools, "tool definitions", "function's name", "parameters", dict, "a JSON schema object")


def _functions_problem(items: Any, plural: str, name: str, body: str, body_types: type | tuple[type, ...],
                       body_expected: str) -> tuple[str, str] | None:
    """The shape tool calls and tool definitions share: a list of {"function": {name, <body>}} or bare {name, <body>}."""
    if not isinstance(items, list):
        return "", f"expected a list of {plural}, got {type(items).__name__}"
    for j, item in enumerate(items):
        if not isinstance(item, dict):
            return f"[{j}]", f"expected an object with a function, got {type(item).__name__}"
        function, where = (item["function"], f"[{j}].function") if "function" in item else (item, f"[{j}]")
        if not isinstance(function, dict):
            return where, f"expected an object with name and {body}, got {type(function).__name__}"
        if not isinstance(function.get("name"), str) or not function["name"]:
            return f"{where}.name", f"expected the {name}"
        if not isinstance(function.get(body, {}), body_types):
            return f"{where}.{body}", f"expected {body_expected}, got {type(function[body]).__name__}"
    return None


def _from_sharegpt(data: dict, bad: _Reporter) -> list[dict] | None:
    raw = _json_cell(data["conversations"])
    if not isinstance(raw, list):
        return bad("conversations", f"expected a list of turns, got {type(raw).__name__}")
    out = []
    if isinstance(data.get("system"), str) and data["system"]:
        out.append({"role": "system", "content": data["system"]})
    for i, turn in enumerate(raw):
        if not isinstance(turn, dict):
            return bad(f"conversations[{i}]", f"expected an object with from and value, got {type(turn).__name__}")
        who = turn.get("from", turn.get("role"))
        if not isinstance(who, str) or who not in SHAREGPT_ROLES:
            return bad(f"conversations[{i}].from", f"unknown role {who!r}; expected one of {', '.join(sorted(SHAREGPT_ROLES))}")
        raw = turn.get("value", turn.get("content"))
        value = vision.parts(raw) if vision.is_parts(raw) else _content(raw)
        if value is None:
            return bad(f"conversations[{i}].value", f"expected a string, got {type(turn.get('value')).__name__}")
        out.append({"role": SHAREGPT_ROLES[who], "content": value})
    return out


def _from_alpaca(data: dict, bad: _Reporter) -> list[dict] | None:
    answer_key = _alpaca_answer_key(data)
    input_key = next((k for k in ALPACA_INPUT_KEYS if k in data), "input")
    for key in ("instruction", input_key, answer_key, "system"):
        given = key in ("instruction", answer_key) and key in data  # the answer may be left out (a prompt), not null
        if (given or data.get(key) is not None) and not isinstance(data.get(key), str):
            return bad(key, f"expected a string, got {type(data.get(key)).__name__}")
    out = []
    if data.get("system"):
        out.append({"role": "system", "content": data["system"]})
    history = data.get("history") or []
    if not isinstance(history, list) or not all(isinstance(h, list) and len(h) == 2 for h in history):
        return bad("history", "expected a list of [question, answer] pairs")
    for q, a in history:
        out += [{"role": "user", "content": str(q)}, {"role": "assistant", "content": str(a)}]
    prompt = data["instruction"] + (("\n\n" + data[input_key]) if data.get(input_key) else "")
    out.append({"role": "user", "content": prompt})
    if answer_key in data:  # no answer: a prompt, for infer and grpo (sft says it has no answer to learn)
        out.append({"role": "assistant", "content": data[answer_key]})
    return out


def _alpaca_answer_key(data: dict) -> str:
    """`output`, or the answer's other usual names (Dolly's `response`); `output` where none is given."""
    return next((k for k in ("output", *RESPONSE_KEYS) if k in data), "output")


def _from_prompt_response(data: dict, bad: _Reporter) -> list[dict] | None:
    p_key = next(k for k in PROMPT_KEYS if k in data)
    r_key = next((k for k in RESPONSE_KEYS if k in data), None)
    prompt, response = data[p_key], data[r_key] if r_key else None
    out = []
    if isinstance(data.get("system"), str) and data["system"]:
        out.append({"role": "system", "content": data["system"]})
    if isinstance(prompt, list):  # conversational prompt/completion (TRL style)
        fake = {"messages": prompt + (response if isinstance(response, list) else [])}
        msgs = _from_messages(fake, bad)
        if msgs is None:
            return None
        out += msgs
        if r_key is not None and not isinstance(response, list):
            if not isinstance(response, str):
                return bad(r_key, f"expected a string or a list of messages, got {type(response).__name__}")
            out.append({"role": "assistant", "content": response})
        return out
    if not isinstance(prompt, str):
        return bad(p_key, f"expected a string, got {type(prompt).__name__}")
    if r_key is None:
        return out + [{"role": "user", "content": prompt}]
    response = _chosen_choice(data, response)
    if not isinstance(response, str):
        return bad(r_key, f"expected a string, got {type(response).__name__}")
    return out + [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def _chosen_choice(data: dict, answer: Any) -> Any:
    """A multiple-choice answer given as the 0-based index of its choice (MMLU's shape on the hub: question, choices,
    answer 2): that choice's text, which a model learns and an eval scores against. Any other answer as it is."""
    choices = data.get("choices")
    if isinstance(answer, int) and not isinstance(answer, bool) and isinstance(choices, list) \
            and 0 <= answer < len(choices) and isinstance(choices[answer], (str, int, float)):
        return str(choices[answer])
    return answer


def _preference_pair_for_sft(data: dict, messages: list[dict], bad: _Reporter) -> bool:
    """A preference pair given to sft has no answer of its own (its answers are chosen/rejected): say so, rather than
    that the row lacks an assistant turn. True when reported."""
    if "chosen" in data and "rejected" in data and not any(m["role"] == "assistant" for m in messages):
        bad("chosen", "a preference pair (chosen/rejected) has no single answer for sft to learn; train on it with "
                      "`tunesmith rlhf --method dpo` (or orpo, simpo, cpo, rm), or check it with --kind preference")
        return True
    return False


def _check_messages(messages: list[dict], kind: str, fmt: str, bad: _Reporter, data: dict) -> bool:
    field = {"messages": "messages", "sharegpt": "conversations", "alpaca": _alpaca_answer_key(data)}.get(fmt, "response")
    body = [m for m in messages if m["role"] != "system"]
    if not body and kind == "prompts" and messages:  # a system prompt alone: answered, as deploy (and OpenAI's API)
        return True                                  # answers it
    if not body:
        bad(field, "no user or assistant turn")
        return False
    if body[0]["role"] != "user":
        bad(f"{field}[{messages.index(body[0])}].role", "the first turn after the system prompt must be the user's")
        return False
    for i, m in enumerate(messages):
        if m["role"] == "system" and i != 0:
            bad(f"{field}[{i}].role", "a system message may only come first")
            return False
        if m["role"] == "user" and not vision.text_of(m["content"]).strip() and isinstance(m["content"], str):
            bad(f"{field}[{i}].content" if fmt in ("messages", "sharegpt") else _prompt_field(fmt), "empty user turn")
            return False
    if kind == "prompts":
        if body[-1]["role"] == "assistant":  # answer the conversation up to its last user turn
            del messages[len(messages) - 1]
        return True
    assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistants:
        bad(field, "no assistant turn to learn from (prompts for infer? check them with --kind prompts)")
        return False
    for i in assistants:
        if not messages[i]["content"].strip() and not messages[i].get("tool_calls"):
            where = f"{field}[{i}].content" if fmt in ("messages", "sharegpt") else field
            bad(where, "empty assistant turn (the model would learn to answer nothing)")
            return False
    return True


def _prompt_field(fmt: str) -> str:
    return "instruction" if fmt == "alpaca" else "prompt"
