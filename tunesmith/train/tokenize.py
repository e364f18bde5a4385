"""Rows -> token ids + labels, cached by content hash so a second run starts at once.

The cache key covers the rows, the tokenizer's vocabulary and chat template, the system prompt, chat_template_kwargs
and loss_on; the cache holds every row's ids before any length filter, so changing max_length reuses it.

A conversation is one sample, or one per trained assistant turn when its template rewrites earlier turns once later
ones follow (Qwen3's reasoning, templates/chat.py says why): each such sample is that turn exactly as served.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

from tunesmith.data import vision
from tunesmith.data.rows import Conversation, Problem, Text
from tunesmith.paths import cache_dir
from tunesmith.templates import Template

log = logging.getLogger("tunesmith")

@dataclass
class Prepared:
    """A recipe's data stage: the train and eval datasets, the rows skipped, and what config.yaml records about the
    data (truncation counts, ...), splatted into run.save_config."""

    train: Any
    eval: Any | None
    skipped: int
    record: dict[str, Any] = field(default_factory=dict)


def tokenize_sft(rows: list[Conversation], template: Template, loss_on: str, max_length: int,
                 cuts: Any = None) -> tuple[Any, list[Problem]]:
    """A datasets.Dataset with input_ids and labels (a row may give several samples, see above); rows with nothing to
    learn are problems, and so are rows with a sample over max_length unless `cuts` (train/truncate.py's Cuts for
    --truncation drop|left|right) cuts or drops them, counting what it did."""
    from tunesmith.train.truncate import Cuts

    cuts = cuts or Cuts("error", max_length)
    if unseen := unrendered_tools(rows, template):
        log.warning(unseen)
    problems, dropped = dropped_calls(rows, template)
    if dropped:
        log.warning(dropped)
    key = _key("sft", [[r.messages, r.extra.get("tools")] for r in rows], template, loss_on)

    def build() -> dict[str, list]:
        ids, labels = [], []  # per row: a list of samples
        for row in _progress(rows, "Tokenizing"):
            samples = render_row(row, template, loss_on)
            ids.append([i for i, _ in samples])
            labels.append([l for _, l in samples])
        return {"input_ids": ids, "labels": labels}

    table = _cached(key, build)
    keep = []
    bad = {(p.source, p.line) for p in problems}
    for n, row in enumerate(rows):
        samples = list(zip(table["input_ids"][n], table["labels"][n]))
        if (row.source, row.line) in bad:
            continue
        if all(label == -100 for _, l in samples for label in l):
            problems.append(Problem(row.source, row.line, "messages", "no trained tokens (every turn has loss: false)"))
            continue
        keep += cuts.row(row, samples, problems)
    import datasets

    ds = datasets.Dataset.from_dict({"input_ids": [i for i, _ in keep], "labels": [l for _, l in keep]})
    return ds, problems


def unrendered_tools(rows: list, template: Template) -> str | None:
    """What to say when rows define tools that the chat template cannot render (a template without a tools branch,
    as SmolLM2's ChatML, renders the same text with them or without): the model would train on the calls without
    ever seeing the tools' definitions. None when no row has tools or the template renders them."""
    with_tools = [r for r in rows if getattr(r, "extra", {}).get("tools")]
    if not with_tools or template.renders_tools:
        return None
    first = with_tools[0]
    return (f"{first.source}:{first.line}: tools: {len(with_tools)} row(s) define tools, but the chat template of "
            f"{template._name()} cannot render them: the model trains without seeing their definitions; train a "
            "model whose template renders tools (Qwen2.5, Llama 3.1, Mistral...) or leave the tools out")


def dropped_calls(rows: list, template: Template) -> tuple[list[Problem], str | None]:
    """When the chat template drops tool_calls (SmolLM2's ChatML renders an assistant turn's content only): each row
    whose call carries no text would train an empty answer, so it is a problem; rows whose calls come with text lose
    the calls, which the returned note says. ([], None) when no row calls a tool or the template renders calls."""
    calling = [(r, i) for r in rows for i, m in enumerate(getattr(r, "messages", []))
               if m.get("role") == "assistant" and m.get("tool_calls") and m.get("loss", True)]  # trained turns
    if not calling or template.renders_calls:
        return [], None
    silent = [(r, i) for r, i in calling if not vision.text_of(r.messages[i]["content"]).strip()]
    problems = [Problem(r.source, r.line, f"messages[{i}].tool_calls", (
                    f"the chat template of {template._name()} does not render tool calls, so this turn would train "
                    "an empty answer; train a model whose template renders them (Qwen2.5, Llama 3.1, Mistral...)"))
                for r, i in silent]
    spoken = [(r, i) for r, i in calling if vision.text_of(r.messages[i]["content"]).strip()]
    if not spoken:
        return problems, None
    first = spoken[0][0]
    return problems, (f"{first.source}:{first.line}: tool_calls: {len(spoken)} assistant turn(s) call tools, but "
                      f"the chat template of {template._name()} does not render tool calls: they train on their "
                      "text only")


def render_row(row: Conversation, template: Template, loss_on: str) -> list[tuple[list[int], list[int]]]:
    """One conversation's training samples (ids, labels): what sft trains on and `data inspect` shows."""
    if hasattr(template, "render_images"):  # a vision-language model: its images' tokens too (templates/vision.py)
        from tunesmith.data.images import open_image
        from tunesmith.data.vision import images_of

        pictures = [open_image(ref) for ref in images_of(row.messages)]
        return [template.render_images(row.messages, pictures, loss_on, tools=row.extra.get("tools"))]
    return template.render_samples(row.messages, loss_on=loss_on, tools=row.extra.get("tools"))


def length_problem(row: Any, field: str, tokens: int, max_length: int, reserved: int = 0) -> Problem | None:
    """The one length check of a rendered row, for every method: its `tokens`, plus `reserved` tokens kept for what
    the model will generate (grpo, ppo), must fit in max_length. None when they do."""
    if tokens + reserved <= max_length:
        return None
    room = f" + max_completion_length {reserved}" if reserved else ""
    fixes = "raise max_length, lower max_completion_length," if reserved else "raise max_length"
    return Problem(row.source, row.line, field,
                   f"{tokens} tokens{room} > max_length {max_length}; {fixes} or shorten the row")


def tokenize_pt(rows: list[Text], template: Template, max_length: int, cuts: Any = None,
                problems: list[Problem] | None = None) -> Any:
    """Raw text + EOS, cut into max_length blocks (truncation split, the default: nothing is dropped; packing then
    fills the batches); with `cuts` of another mode, a text longer than max_length is refused, left out or cut."""
    tok = template.tokenizer
    key = _key("pt", [r.text for r in rows], template, "all")

    def build() -> dict[str, list]:
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        return {"input_ids": [tok(r.text, add_special_tokens=False)["input_ids"] + eos for r in _progress(rows, "Tokenizing")]}

    table = _cached(key, build)
    if cuts is None or cuts.mode == "split":
        blocks = [ids[i: i + max_length] for ids in table["input_ids"] for i in range(0, len(ids), max_length)]
    else:  # every token of a text is trained: its ids are its labels
        blocks = [ids for row, whole in zip(rows, table["input_ids"])
                  for ids, _ in cuts.row(row, [(whole, whole)], problems if problems is not None else [], "text")]
    import datasets

    return datasets.Dataset.from_dict({"input_ids": blocks, "labels": blocks})


def _key(kind: str, payload: Any, template: Template, loss_on: str) -> str:
    tok = template.tokenizer
    h = hashlib.sha256()
    h.update(json.dumps([kind, loss_on, template.default_system, tok.chat_template,
                         getattr(template, "chat_template_kwargs", {})], ensure_ascii=False, sort_keys=True).encode())
    backend = getattr(tok, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else json.dumps(tok.get_vocab(), sort_keys=True)).encode())
    h.update(json.dumps(payload, ensure_ascii=False, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def _cached(key: str, build) -> dict[str, list]:
    folder = cache_dir() / "tokenized"
    path = folder / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    table = build()
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(table, f)
    os.replace(tmp, path)  # atomic: a killed run never leaves a half-written cache entry
    return table


def _progress(items: list, desc: str):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=len(items) < 2000, leave=False)


def clear_cache() -> None:
    shutil.rmtree(cache_dir() / "tokenized", ignore_errors=True)
