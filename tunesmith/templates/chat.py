"""The only code that turns messages into token ids, for training, inference and serving alike.

    template = Template(tokenizer)
    ids, labels = template.render(messages)        # sft: labels are -100 outside what is trained
    prompt_ids = template.render_prompt(messages)  # infer, deploy, eval: ends with the assistant header

How it works, for any chat template (no `{% generation %}` markers needed): the model's own template renders the
text; for each assistant turn i we render messages[:i] with the generation prompt and messages[:i+1] without it.
The text between the two is exactly that turn's answer plus its end-of-turn token. The text is tokenized in
segments cut at those points, so (1) the loss mask is exact, and (2) the inference prompt, rendered the same way,
is a token-for-token prefix of the training ids: what was trained is what is served.

Some templates render an earlier turn differently once later turns follow (Qwen3 and DeepSeek-R1 drop past
reasoning, Mistral moves the system prompt to the last user turn, gpt-oss drops the analysis channel). One sequence
cannot hold every turn as it was served, so `render_samples` gives one sample per trained turn instead: the ids
`render_prompt(messages[:i])` (exactly what infer and deploy send at turn i) followed by that turn's answer and its
end-of-turn token (exactly what the model must produce there). Templates that keep earlier turns as they were keep
the single sequence.

chat_template_kwargs (enable_thinking, ...) reach the template on every render; the ones training used are saved
beside the weights, and a request may override them for itself. Templates that print today's date (strftime_now:
Llama 3.2+, Granite 3, Mistral-Small, gpt-oss) print `date_string`'s day instead once it is set: training pins
it to the day it ran (pin_date), so a run served on a later day renders the prompts it trained on.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from tunesmith.errors import TemplateError

IGNORE = -100
TEMPLATE_FILE = "tunesmith_template.json"
# For tokenizers that ship no chat template (base models): role headers and the tokenizer's own EOS as end of turn.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ '### ' + m['role'] + ':\n' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### assistant:\n' }}{% endif %}"
)
PROBE = [{"role": "user", "content": "Probe question?"}, {"role": "assistant", "content": "Probe answer."}]
# A tool call, to find what ends an answer that calls a tool (gpt-oss: <|call|>, not its end of turn)
PROBE_TOOLS = [{"type": "function", "function": {"name": "probe_tool", "description": "Probe.", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}}}}]
PROBE_CALL = [{"role": "user", "content": "Probe question?"}, {"role": "assistant", "content": "", "tool_calls": [
    {"id": "probe1234", "type": "function", "function": {"name": "probe_tool", "arguments": {"q": "x"}}}]}]
CALL_TAG = "<|tool_call|>"  # Granite 3: its template drops tool_calls; its system prompt asks for this + a JSON list
# date_string as Llama's templates write it ("26 Jul 2024"); ISO dates are read too
DATE_FORMAT = "%d %b %Y"
STRFTIME_NOW = re.compile(r"strftime_now\(\s*(['\"])(.*?)\1\s*\)")
# apply_chat_template's own arguments: a chat_template_kwargs key of the same name would replace what tunesmith passes
# (vLLM refuses them in a request's chat_template_kwargs too)
RESERVED_KWARGS = frozenset({"conversation", "messages", "tools", "documents", "chat_template", "add_generation_prompt",
                             "continue_final_message", "tokenize", "padding", "truncation", "max_length",
                             "return_tensors", "return_dict", "return_assistant_tokens_mask", "tokenizer_kwargs"})


@dataclass
class Segment:
    text: str
    trained: bool


class RewritesPastTurns(TemplateError):
    """The template renders an earlier turn differently once later turns follow: no single sequence is exact."""


class Template:
    def __init__(self, tokenizer: Any, default_system: str | None = None, chat_template_kwargs: dict | None = None):
        self.tokenizer = tokenizer
        self.default_system = default_system
        self.chat_template_kwargs = check_kwargs(chat_template_kwargs)
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = FALLBACK_TEMPLATE
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.calls_as_text = False  # write tool_calls into the content (set by _probe_tool_call)
        self.end_of_turn = self._probe_end_of_turn()
        self.stop_token_ids = sorted(set(self._stop_ids() + self._probe_tool_call()))

    # -------------------------------------------------------------------------
    # Rendering

    def render(self, messages: list[dict], loss_on: str = "assistant", tools: list | None = None,
               chat_template_kwargs: dict | None = None) -> tuple[list[int], list[int]]:
        """Ids of the whole conversation and labels: the ids where trained, -100 elsewhere.

        loss_on: "assistant" (every assistant turn unless it says "loss": false), "last" (the final assistant
        turn), "all" (every token). Raises RewritesPastTurns when a trained turn is not rendered in the whole
        conversation as it was served; render_samples handles that case."""
        ids: list[int] = []
        labels: list[int] = []
        segs = self.segments(messages, add_generation_prompt=False, loss_on=loss_on, tools=tools,
                             chat_template_kwargs=chat_template_kwargs)
        for seg in segs:
            seg_ids = self._encode(seg.text)
            ids += seg_ids
            labels += seg_ids if seg.trained else [IGNORE] * len(seg_ids)
        return ids, labels

    def render_samples(self, messages: list[dict], loss_on: str = "assistant", tools: list | None = None,
                       chat_template_kwargs: dict | None = None) -> list[tuple[list[int], list[int]]]:
        """The training samples of one conversation: one sequence when the template keeps earlier turns as they
        were served, else one sample per trained assistant turn, each exactly as inference renders that turn."""
        try:
            return [self.render(messages, loss_on, tools, chat_template_kwargs)]
        except RewritesPastTurns:
            pass
        msgs = self._with_system(messages)
        turns = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
        if loss_on == "last":
            turns = turns[-1:]
        samples = []
        for i in turns:
            if i == 0 or (loss_on == "assistant" and not msgs[i].get("loss", True)):
                continue
            samples.append(self._turn_sample(msgs, i, tools, chat_template_kwargs))
        return samples

    def render_prompt(self, messages: list[dict], tools: list | None = None,
                      chat_template_kwargs: dict | None = None) -> list[int]:
        """Ids that ask the model for the next assistant turn."""
        segs = self.segments(messages, add_generation_prompt=True, loss_on="assistant", tools=tools, prompt_only=True,
                             chat_template_kwargs=chat_template_kwargs)
        return [i for seg in segs for i in self._encode(seg.text)]

    def render_text(self, messages: list[dict], add_generation_prompt: bool = False, tools: list | None = None,
                    chat_template_kwargs: dict | None = None) -> str:
        return self._apply(self._with_system(messages), add_generation_prompt, tools, chat_template_kwargs)

    def segments(self, messages: list[dict], add_generation_prompt: bool, loss_on: str, tools: list | None = None,
                 prompt_only: bool = False, chat_template_kwargs: dict | None = None) -> list[Segment]:
        """The rendered text cut at every assistant turn, each piece marked trained or not.

        Cuts are the same for training and for prompts, so their token ids agree. A template that renders an
        earlier turn differently once later turns follow (Qwen3 drops past reasoning) gets no cut at that turn:
        fine when it is not trained (loss_on: last, or a prompt), RewritesPastTurns when it would be."""
        kw = chat_template_kwargs
        msgs = self._with_system(messages)
        full = self._apply(msgs, add_generation_prompt, tools, kw)
        if loss_on == "all" and not prompt_only:
            return [Segment(full, True)]
        assistants = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
        last = assistants[-1] if assistants else None
        out: list[Segment] = []
        cursor = 0
        for i in assistants:
            wanted = not prompt_only and (i == last if loss_on == "last" else msgs[i].get("loss", True))
            if i == 0 and not wanted:  # nothing before it to cut from (templates refuse an empty conversation)
                continue
            before = self._apply(msgs[:i], True, tools, kw)
            through = self._apply(msgs[: i + 1], False, tools, kw)
            if not (through.startswith(before) and full.startswith(through) and len(before) >= cursor):
                if not wanted:
                    continue
                raise RewritesPastTurns(
                    f"the chat template of {self._name()} renders earlier turns differently once later turns follow "
                    "(for example it drops reasoning from past answers), so one sequence cannot train every turn "
                    "as it is served; render_samples trains each turn as its own sample."
                )
            answer = through[len(before):]
            kept = answer.rstrip(" \n")  # the newline after the end-of-turn token is template layout, not output
            out += [Segment(full[cursor: len(before)], False), Segment(kept, bool(wanted))]
            cursor = len(before) + len(kept)
        out.append(Segment(full[cursor:], False))
        return [s for s in out if s.text]

    def _turn_sample(self, msgs: list[dict], i: int, tools: list | None, kw: dict | None) -> tuple[list[int], list[int]]:
        """Turn i as inference meets it: the served prompt's ids, then the answer and its end-of-turn token."""
        prompt_text = self._apply(msgs[:i], True, tools, kw)
        through = self._apply(msgs[: i + 1], False, tools, kw)
        start = len(prompt_text) if through.startswith(prompt_text) else _answer_start(prompt_text, through, msgs[i - 1])
        if start is None:
            raise TemplateError(
                f"the chat template of {self._name()} renders assistant turn {i} so that it does not follow the "
                "prompt it renders for that turn (with chat_template_kwargs "
                f"{ {**self.chat_template_kwargs, **(kw or {})} }); for example enable_thinking: false with reasoning "
                "in the answer. Drop the reasoning from such rows or change chat_template_kwargs."
            )
        answer = through[start:].rstrip(" \n")
        prompt = self.render_prompt(msgs[:i], tools=tools, chat_template_kwargs=kw)
        answer_ids = self._encode(answer)
        return prompt + answer_ids, [IGNORE] * len(prompt) + answer_ids

    def _with_system(self, messages: list[dict]) -> list[dict]:
        msgs = [dict(m) for m in messages]
        if self.default_system and (not msgs or msgs[0]["role"] != "system"):
            msgs.insert(0, {"role": "system", "content": self.default_system})
        return msgs

    def _apply(self, messages: list[dict], add_generation_prompt: bool, tools: list | None,
               chat_template_kwargs: dict | None = None) -> str:
        clean = [_normalise_tool_calls({k: v for k, v in m.items() if k != "loss"}) for m in messages]
        if self.calls_as_text:
            clean = [_calls_as_text(m) for m in clean]
        kwargs = {**self.chat_template_kwargs, **check_kwargs(chat_template_kwargs)}
        if tools:
            kwargs["tools"] = tools
        if kwargs.get("date_string") and "strftime_now" in (self.tokenizer.chat_template or ""):
            kwargs["chat_template"] = _dated(self.tokenizer.chat_template, str(kwargs["date_string"]))
        try:
            return self.tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs)
        except Exception as err:  # jinja raises TemplateError/TypeError with the template's own message
            raise TemplateError(f"the chat template of {self._name()} failed: {err}") from None

    def pin_date(self, today: datetime.date | None = None) -> str | None:
        """For a template that prints today's date: fix it to `today` (default: now) as chat_template_kwargs'
        date_string, which is saved with the template, so prompts served later are the ones trained on. A
        date_string already set is kept. Returns the date_string, None when the template prints no date."""
        if "strftime_now" not in (self.tokenizer.chat_template or ""):
            return self.chat_template_kwargs.get("date_string")
        if not self.chat_template_kwargs.get("date_string"):
            self.chat_template_kwargs["date_string"] = (today or _today()).strftime(DATE_FORMAT)
        return self.chat_template_kwargs["date_string"]

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    # -------------------------------------------------------------------------
    # End of turn: what the model must learn to emit, and what stops generation

    def _probe_end_of_turn(self) -> str:
        msgs = self._with_system(PROBE)
        before = self._apply(msgs[:-1], True, None)
        through = self._apply(msgs, False, None)
        answer = through[len(before):].rstrip(" \n")
        content = PROBE[-1]["content"]
        if not through.startswith(before) or content not in answer:
            raise TemplateError(f"the chat template of {self._name()} does not render an assistant answer after its generation prompt")
        end = answer[answer.index(content) + len(content):]
        if not end.strip():
            raise TemplateError(
                f"the chat template of {self._name()} puts no end-of-turn token after an assistant answer, so a tuned "
                "model would never learn to stop. Use a template that ends turns with the EOS token."
            )
        return end

    def _stop_ids(self) -> list[int]:
        ids = [i for i in self._encode(self.end_of_turn) if i in set(self.tokenizer.all_special_ids)]
        eos = self.tokenizer.eos_token_id
        return sorted(set(ids + ([eos] if eos is not None else [])))

    def _probe_tool_call(self) -> list[int]:
        """The special token that ends an answer calling a tool when it is not the end of turn (gpt-oss's <|call|>):
        generation must stop there too. Templates that drop tool_calls but teach <|tool_call|> + a JSON list in
        their system prompt (Granite 3) get the calls written so into the content (calls_as_text), in training and
        in served history alike."""
        msgs = self._with_system(PROBE_CALL)
        try:
            before = self._apply(msgs[:-1], True, PROBE_TOOLS)
            through = self._apply(msgs, False, PROBE_TOOLS)
        except TemplateError:
            return []  # a template without tools
        if not through.startswith(before):
            return []
        if "probe_tool" not in through[len(before):]:
            self.calls_as_text = CALL_TAG in (self.tokenizer.chat_template or "")
            return []
        ids = self._encode(through[len(before):].rstrip(" \n"))
        return ids[-1:] if ids and ids[-1] in set(self.tokenizer.all_special_ids) else []

    @cached_property
    def renders_tools(self) -> bool:
        """Whether tool definitions reach the prompt: a template without a tools branch (SmolLM2's ChatML) renders
        the same text with them or without, and the model would never see a request's tools."""
        msgs = self._with_system(PROBE[:1])
        try:
            return self._apply(msgs, True, PROBE_TOOLS) != self._apply(msgs, True, None)
        except TemplateError:  # a template that refuses tools
            return False

    @cached_property
    def renders_calls(self) -> bool:
        """Whether an assistant turn's tool_calls reach the rendered text (SmolLM2's ChatML renders its content only,
        and a call with no text would train an empty answer)."""
        try:  # the tools' definitions may name the function too: count what the answer adds
            prompt = self.render_text(PROBE_CALL[:-1], add_generation_prompt=True, tools=PROBE_TOOLS)
            whole = self.render_text(PROBE_CALL, tools=PROBE_TOOLS)
        except TemplateError:  # a template that refuses tools
            return False
        return whole.count("probe_tool") > prompt.count("probe_tool")

    def _name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "") or "this model"

    # -------------------------------------------------------------------------
    # Saved beside the weights: infer, deploy and export read it, never re-guess

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.tokenizer.save_pretrained(folder)
        info = {"default_system": self.default_system, "end_of_turn": self.end_of_turn, "stop_token_ids": self.stop_token_ids,
                "chat_template_kwargs": self.chat_template_kwargs}
        (folder / TEMPLATE_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path) -> "Template":
        from transformers import AutoTokenizer

        folder = Path(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        info_path = folder / TEMPLATE_FILE
        info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
        return cls(tokenizer, default_system=info.get("default_system"),
                   chat_template_kwargs=info.get("chat_template_kwargs"))


def check_kwargs(kwargs: dict | None) -> dict:
    """chat_template_kwargs as given, refused when a key is one of apply_chat_template's own arguments."""
    taken = sorted(RESERVED_KWARGS & set(kwargs or {}))
    if taken:
        raise TemplateError(f"chat_template_kwargs: {', '.join(taken)} cannot be set here (tunesmith passes "
                            f"{'it' if len(taken) == 1 else 'them'} to the template itself); drop "
                            f"{'it' if len(taken) == 1 else 'them'}")
    return dict(kwargs or {})


def _answer_start(prompt: str, through: str, before: dict) -> int | None:
    """Where turn i's answer starts in a rendering that changed what precedes it (Mistral moves the system prompt to
    the last user turn, so it leaves once an answer follows): after the longest tail of the served prompt that the
    rendering ends its prompt part with. The tail must hold the whole message before the answer, so the cut is
    right after that message's turn header, never inside earlier text."""
    content = before.get("content")
    anchor = content if isinstance(content, str) and content else None
    for size in range(len(prompt), 0, -1):
        tail = prompt[-size:]
        if anchor is not None and anchor not in tail:
            return None
        at = through.rfind(tail)
        if at >= 0:
            return at + size
    return None


def _normalise_tool_calls(message: dict) -> dict:
    """OpenAI sends tool-call arguments as a JSON string; chat templates (HF convention) expect an object. Done here,
    the one place training data and served requests both pass, so a tool call renders the same in both."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    fixed = []
    for call in calls:
        function = dict(call.get("function", call))
        if isinstance(function.get("arguments"), str):
            function["arguments"] = _json_or_text(function["arguments"])
        fixed.append({**call, "function": function} if "function" in call else function)
    return {**message, "tool_calls": fixed}


def _today() -> datetime.date:
    return datetime.date.today()


@lru_cache(maxsize=16)
def _dated(source: str, date_string: str) -> str:
    """The template with each strftime_now(FORMAT) replaced by date_string's day in that FORMAT (Llama 3.2+ and 4
    read date_string themselves and call strftime_now only without it; the others always call it)."""
    for fmt in (DATE_FORMAT, "%Y-%m-%d", "%d %B %Y", "%B %d, %Y"):
        try:
            day = datetime.datetime.strptime(date_string, fmt)
            break
        except ValueError:
            continue
    else:
        raise TemplateError(f"chat_template_kwargs: date_string {date_string!r} is not a date like "
                            f"{datetime.date(2024, 7, 26).strftime(DATE_FORMAT)!r} or 2024-07-26")
    return STRFTIME_NOW.sub(lambda m: json.dumps(day.strftime(m.group(2))), source)


def _calls_as_text(message: dict) -> dict:
    """An assistant message's tool calls as Granite 3 writes them: <|tool_call|> and a JSON list of
    {"name", "arguments"} after the content (its template renders the content only)."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    listed = [{"name": c.get("function", c)["name"], "arguments": c.get("function", c).get("arguments", {})}
              for c in calls]
    text = (message.get("content") or "") + CALL_TAG + json.dumps(listed, ensure_ascii=False)
    return {**{k: v for k, v in message.items() if k != "tool_calls"}, "content": text}


def _json_or_text(text: str):
    """The parsed object, or the text itself when it is not JSON (rendered as the user wrote it)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
