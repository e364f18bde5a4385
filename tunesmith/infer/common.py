"""Pieces every backend shares: the served models' names, picking the one a request names, and its prompt ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from tunesmith.config import DEFAULT_MODEL
from tunesmith.errors import ConfigError
from tunesmith.infer.types import GenerationRequest, UnknownModelError

S = TypeVar("S")


def base_name(model: str | None) -> str:
    """The name every backend serves --model under: its folder's (a registry name or hub id: its last part)."""
    return Path(model or DEFAULT_MODEL).name


def refuse_hidden_adapter(model: str | None, adapters: dict[str, str] | None) -> None:
    """An adapter named as the base is served: one would hide the other (the base was loaded last, so the adapter
    went unserved without a word). Checked before any weights load."""
    name = base_name(model)
    if model and name in (adapters or {}):
        raise ConfigError(f"adapters: {name!r} is also the name --model {model} is served under, so the adapter would "
                          f"not be served; give it another name: --adapters NAME={adapters[name]}")


def pick_served(served: dict[str, S], default: str, model: str | None) -> S:
    if model is None or model == default:
        return served[default]
    if model not in served:
        raise UnknownModelError(f"model {model!r} is not served here; available: {', '.join(served)}")
    return served[model]


def prompt_ids(template: Any, request: GenerationRequest) -> list[int]:
    """Chat: rendered by the run's Template (what training saw). Completion: the text tokenized as is. Ids the
    caller rendered already (request.prompt_ids) are used as given."""
    if request.prompt_ids is not None:
        return list(request.prompt_ids)
    if request.messages is not None:
        ids = template.render_prompt(request.messages, tools=request.tools,
                                     chat_template_kwargs=request.chat_template_kwargs)
        if request.assistant_prefix:  # encoded as training encodes an answer: its own segment after the prompt
            ids += template.tokenizer(request.assistant_prefix, add_special_tokens=False)["input_ids"]
        return ids
    ids = template.tokenizer(request.prompt or "")["input_ids"]
    if not ids:  # "" (or text the tokenizer drops, such as "\x04"): start from the start of text, as OpenAI does
        start = template.tokenizer.bos_token_id
        start = template.tokenizer.eos_token_id if start is None else start
        ids = [] if start is None else [start]
    return ids


def reasoning_split(template: Any, request: GenerationRequest) -> Any:
    """Engine.reasoning for a Template: chat requests only (a completion's text is returned as generated)."""
    from tunesmith.templates.reasoning import ReasoningSplit

    if request.messages is None:
        return None
    ids = request.prompt_ids if request.prompt_ids is not None else prompt_ids(template, request)
    return ReasoningSplit.for_template(template, ids)


def override_templates(templates: list[Any], system: str | None, chat_template_kwargs: dict | None) -> None:
    """--system and --chat-template-kwargs over what each served run saved with its template (a request's own
    chat_template_kwargs go over these in turn)."""
    from tunesmith.templates.chat import check_kwargs

    extra = check_kwargs(chat_template_kwargs)
    for template in templates:
        if system is not None:
            template.default_system = system
        template.chat_template_kwargs = {**template.chat_template_kwargs, **extra}
