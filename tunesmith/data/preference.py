"""Preference rows in the shapes users have, normalised to Preference(prompt messages, chosen, rejected).

- `prompt` / `chosen` / `rejected`: strings, or message lists (TRL's conversational form); prompt aliases
  `question`, `query`, `instruction` (+ `input`), optional `system`
- `messages` (ending with the chosen assistant turn) + `rejected_response`
- ShareGPT `conversations` + `chosen` / `rejected` as {"from": "gpt", "value": ...} (LLaMA-Factory's layout)

KTO rows (kind "kto") are UnpairedPreference(prompt messages, completion, label): `prompt` (and its aliases) +
`completion` + `label`, or `messages` ending with the labelled answer + `label`. A preference pair in a KTO file
stays a Preference; the KTO trainer unpairs it into a desirable and an undesirable row, as TRL does.
"""

from __future__ import annotations

from typing import Any

from tunesmith.data import vision
from tunesmith.data.formats import SHAREGPT_ROLES, _content, _from_messages, _Reporter
from tunesmith.data.rows import Preference, Problem, RawRow, UnpairedPreference

PROMPT_KEYS = ("prompt", "question", "query", "instruction")
# CSV files give strings and Parquet/hub datasets often ints, so those spellings of a label are read too.
LABELS = {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False}  # 1.0: pandas' to_csv of floats


def normalise_preference(row: RawRow, problems: list[Problem]) -> Preference | None:
    bad = _Reporter(row, problems)
    data = row.data
    if not isinstance(data, dict):
        return bad("row", f"expected a JSON object, got {type(data).__name__}")
    if "messages" in data and "rejected_response" in data:
        msgs = _from_messages({"messages": data["messages"]}, bad)
        if msgs is None:
            return None
        if not msgs or msgs[-1]["role"] != "assistant":
            return bad("messages", "the last message must be the chosen assistant answer")
        chosen, prompt = msgs[-1]["content"], msgs[:-1]
        rejected = _answer(data["rejected_response"], "rejected_response", bad)
    elif "chosen" in data and "rejected" in data and _implicit_prompt(data):
        # TRL's implicit prompt (trl-lib/ultrafeedback_binarized): two whole conversations that differ in the answer
        msgs = _from_messages({"messages": data["chosen"][:-1]}, bad)
        if msgs is None:
            return None
        system = data.get("system")
        prompt = ([{"role": "system", "content": system}] if isinstance(system, str) and system else []) + msgs
        chosen, rejected = _answers(data, bad)
    elif "chosen" in data and "rejected" in data:
        prompt = _prompt(data, bad)
        if prompt is None or not all(_repeats_prompt(data[key], prompt, key, bad) for key in ("chosen", "rejected")):
            return None
        chosen, rejected = _answers(data, bad)
    else:
        cols = ", ".join(sorted(data)) or "none"
        kto = "; a row with a label is KTO data: train it with `tunesmith rlhf --method kto`" if "label" in data else ""
        return bad("columns", f"not a preference row ({cols}); expected prompt/chosen/rejected or "
                              f"messages + rejected_response{kto}")
    if chosen is None or rejected is None:
        return None
    prompt = vision.attach(prompt, data, row.source, "prompt", bad)  # images: data/vision.py
    if prompt is None:
        return None
    if not prompt or prompt[-1]["role"] != "user":
        return bad("prompt", "the prompt must end with a user turn")
    for key, text in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(text, str):
            return bad(key, "expected text (images go in the prompt)")
        if not text.strip():
            return bad(key, f"empty {key} answer")
    if chosen == rejected:
        return bad("rejected", "identical to chosen: the pair teaches nothing")
    return Preference(prompt, chosen, rejected, row.source, row.line)


def normalise_kto(row: RawRow, problems: list[Problem]) -> UnpairedPreference | Preference | None:
    bad = _Reporter(row, problems)
    data = row.data
    if not isinstance(data, dict):
        return bad("row", f"expected a JSON object, got {type(data).__name__}")
    if "label" not in data and "completion" not in data:
        if ("chosen" in data and "rejected" in data) or ("messages" in data and "rejected_response" in data):
            return normalise_preference(row, problems)
        cols = ", ".join(sorted(data)) or "none"
        return bad("columns", f"not a KTO row ({cols}); expected prompt/completion/label, messages + label, or a "
                              "preference pair (prompt/chosen/rejected)")
    if "messages" in data and "completion" not in data:
        msgs = _from_messages({"messages": data["messages"]}, bad)
        if msgs is None:
            return None
        if not msgs or msgs[-1]["role"] != "assistant":
            return bad("messages", "the last message must be the assistant answer that label judges")
        prompt, completion = msgs[:-1], msgs[-1]["content"]
    else:
        prompt = _prompt(data, bad)
        if prompt is None:
            return None
        if "completion" not in data:
            return bad("completion", "missing: expected the assistant answer that label judges")
        if not _repeats_prompt(data["completion"], prompt, "completion", bad):
            return None
        completion = _answer(data["completion"], "completion", bad)
        if completion is None:
            return None
    prompt = vision.attach(prompt, data, row.source, "prompt", bad)
    if prompt is None:
        return None
    if not prompt or prompt[-1]["role"] != "user":
        return bad("prompt", "the prompt must end with a user turn")
    if not completion.strip():
        return bad("completion", "empty completion")
    if "label" not in data:
        return bad("label", "missing: expected true (desirable) or false (undesirable)")
    label = data["label"]
    if not isinstance(label, bool):
        # pandas turns an int column with gaps into floats (1.0)
        label = LABELS.get(str(label).strip().lower()) if isinstance(label, (str, int, float)) else None
        if label is None:
            return bad("label", f"expected true (desirable) or false (undesirable), got {data['label']!r}")
    return UnpairedPreference(prompt, completion, label, row.source, row.line)


def _prompt(data: dict, bad: _Reporter) -> list[dict] | None:
    system = [{"role": "system", "content": data["system"]}] if isinstance(data.get("system"), str) and data["system"] else []
    if "conversations" in data:
        turns = data["conversations"]
        if not isinstance(turns, list):
            return bad("conversations", f"expected a list of turns, got {type(turns).__name__}")
        out = []
        for i, t in enumerate(turns):
            who = t.get("from", t.get("role")) if isinstance(t, dict) else None
            text = _content(t.get("value", t.get("content"))) if isinstance(t, dict) else None
            if not isinstance(who, str) or who not in SHAREGPT_ROLES or text is None:
                return bad(f"conversations[{i}]", "expected {from, value} with a known role and string value")
            out.append({"role": SHAREGPT_ROLES[who], "content": text})
        return system + out
    key = next((k for k in PROMPT_KEYS if k in data), None)
    if key is None:
        return bad("prompt", "missing: expected prompt (or question, query, instruction)")
    value = data[key]
    if isinstance(value, list):
        msgs = _from_messages({"messages": value}, bad)
        return None if msgs is None else system + msgs
    if not isinstance(value, str):
        return bad(key, f"expected a string or a list of messages, got {type(value).__name__}")
    if key == "instruction" and isinstance(data.get("input"), str) and data["input"]:
        value = value + "\n\n" + data["input"]
    return system + [{"role": "user", "content": value}]


def _implicit_prompt(data: dict) -> bool:
    """No prompt column, and chosen and rejected are message lists that share every turn but their last."""
    chosen, rejected = data["chosen"], data["rejected"]
    return (not any(k in data for k in (*PROMPT_KEYS, "conversations")) and isinstance(chosen, list)
            and isinstance(rejected, list) and len(chosen) > 1 and chosen[:-1] == rejected[:-1])


def _repeats_prompt(value: Any, prompt: list[dict], key: str, bad: _Reporter) -> bool:
    """Beside an explicit prompt, a chosen/rejected message list's turns before its answer may only repeat the prompt
    (UltraFeedback's layout: the prompt, and each answer as the whole conversation); other turns would be dropped
    unseen, so the row is refused."""
    if not isinstance(value, list) or len(value) < 2:
        return True
    earlier = _from_messages({"messages": value[:-1]}, bad)
    if earlier is None:
        return False
    said = [(m["role"], m["content"]) for m in earlier]
    asked = [(m["role"], m["content"]) for m in prompt]
    if said in (asked, [turn for turn in asked if turn[0] != "system"]):
        return True
    whole = "messages + label" if key == "completion" else "the whole conversation in both chosen and rejected"
    bad(key, f"its {len(said)} turn(s) before the answer are not the prompt's, and would be dropped: give {key} as "
             f"the answer alone, or {whole} without a prompt column")
    return False


def _answers(data: dict, bad: _Reporter) -> tuple[str | None, str | None]:
    """chosen and rejected; a bad chosen is the row's one problem (a skipped row counts once)."""
    chosen = _answer(data["chosen"], "chosen", bad)
    return chosen, None if chosen is None else _answer(data["rejected"], "rejected", bad)


def _answer(value: Any, key: str, bad: _Reporter) -> str | None:
    """A string, a message list ending with the assistant's answer, or a {from/role, value/content} turn."""
    where = key
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        where, value = f"{key}[{len(value) - 1}]", value[-1]
    if isinstance(value, dict):
        # The answer is the assistant's turn: a list that ends with the user's or a tool's turn is a malformed row,
        # reported, not trained on as if the assistant had written that turn.
        who = value.get("role", value.get("from"))
        if who is not None and (not isinstance(who, str) or SHAREGPT_ROLES.get(who) != "assistant"):
            return bad(f"{where}.role", f"the answer must be the assistant's turn, got role {who!r}")
        value = value.get("content", value.get("value"))
    text = _content(value)
    if text is None:
        return bad(key, f"expected a string, a message or a list of messages, got {type(value).__name__}")
    return text
