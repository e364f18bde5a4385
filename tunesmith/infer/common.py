"""Pieces every backend shares: picking the served model a request names, and its prompt ids."""

from __future__ import annotations

from typing import Any, TypeVar

from tunesmith.infer.types import GenerationRequest, UnknownModelError

S = TypeVar("S")


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
        return template.render_prompt(request.messages, tools=request.tools)
    return template.tokenizer(request.prompt or "")["input_ids"]
