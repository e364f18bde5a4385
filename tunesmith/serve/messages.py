"""POST /v1/messages (Anthropic's Messages API), with no HTTP: the same engine, chat template, versions, keys and
guardrails as /v1/chat/completions, in Anthropic's request, response and stream shapes, so the official `anthropic`
SDK works unchanged (base_url=http://HOST:PORT, its x-api-key header is accepted beside Bearer).

    reply = await create_message(serving, MessagesRequest(model="prd", max_tokens=200, messages=[...]))
    count = await count_tokens(serving, CountTokensRequest(model="prd", messages=[...]))  # /v1/messages/count_tokens

Mapping: `system` becomes the system message; a last assistant message is a prefill (the answer continues it, its
text encoded after the prompt as training encodes an answer); `stop_sequences` are stop strings; `metadata.user_id`
is the sticky user of a model with versions. stop_reason: end_turn (the model's end of turn), stop_sequence (with the
one that ended it in stop_sequence), max_tokens, or refusal (an output guardrail blocked the answer). Text blocks, and
image blocks for a vision-language model (base64 or url sources, read under the server's image policy as chat's
image_url parts are: serve/images.py); documents, tools and extended thinking, and images for a text model, are refused
by name (400), and /openapi.json says so. Errors keep this server's
one shape ({"error": {"message", "type", ...}}), which the anthropic SDK reads as well.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, WithJsonSchema

from tunesmith.infer.types import GenerationRequest
from tunesmith.serve.errors import APIError, engine_errors, stream_error
from tunesmith.serve.guardrails import CONTENT_FILTER
from tunesmith.serve.protocol import Lenient, Strict, documented, integer
from tunesmith.serve.serving import EventStream, Generation, Serving, refuse_unencodable

TEXT_BLOCKS = {"type": "array", "items": {"type": "object", "required": ["type", "text"], "properties": {
    "type": {"const": "text"}, "text": {"type": "string"}}}}
REFUSED = {"type": "null", "description": "Not supported here (text blocks only): leave it out."}
MESSAGES = {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/MessageParam"},  # the first
            "prefixItems": [{"allOf": [{"$ref": "#/components/schemas/MessageParam"},  # one a user's, as Anthropic
                                       {"properties": {"role": {"const": "user"}}}]}]}  # asks (items: the rest)
STOP_REASON = {"stop": "end_turn", "length": "max_tokens", CONTENT_FILTER: "refusal"}


class TextBlock(Lenient):
    type: Literal["text"]
    text: str


class ImageBlock(Lenient):
    """Read for vision models (its source: base64 data with a media_type, or a url), refused by name for text ones."""

    type: Literal["image"]
    source: dict[str, Any]


class OtherBlock(Lenient):
    """image, document, tool_use, tool_result, thinking...: parsed so they can be refused by name."""

    type: str


class MessageParam(Lenient):
    role: Literal["user", "assistant"]
    content: Annotated[str | list[TextBlock | ImageBlock | OtherBlock],
                       documented({"anyOf": [{"type": "string"}, TEXT_BLOCKS]})]


class Metadata(Lenient):
    user_id: str | None = None


class CountTokensRequest(Strict):
    """POST /v1/messages/count_tokens: what /v1/messages would read as its prompt (no max_tokens, no sampling)."""

    model: str | None = None  # tunesmith: may be left out to use the default model
    messages: Annotated[list[MessageParam], Field(min_length=1), WithJsonSchema(MESSAGES)]
    system: Annotated[str | list[TextBlock] | None, documented({"anyOf": [{"type": "string"}, TEXT_BLOCKS,
                                                                          {"type": "null"}]})] = None
    tools: Annotated[Any, documented(REFUSED)] = None
    tool_choice: Annotated[Any, documented(REFUSED)] = None
    thinking: Annotated[Any, documented(REFUSED)] = None
    output_config: Annotated[Any, documented(REFUSED)] = None  # structured output, effort: not served here
    # Anthropic's hints on caching, speed and accounts: accepted and not used (prefix caching here is automatic)
    cache_control: dict[str, Any] | None = None
    speed: str | None = None
    user_profile_id: str | None = None
    workspace_id: str | None = None


class MessagesRequest(CountTokensRequest):
    """POST /v1/messages: the prompt's fields, and how to answer it."""

    max_tokens: integer(ge=1)
    metadata: Metadata | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: Annotated[Any, documented(REFUSED)] = None
    container: Annotated[Any, documented(REFUSED)] = None  # Anthropic's code-execution tools
    diagnostics: Annotated[Any, documented(REFUSED)] = None
    inference_geo: str | None = None  # hints, as above
    service_tier: str | None = None


class ContentText(BaseModel):
    type: Literal["text"] = "text"
    text: str


class MessageUsage(BaseModel):
    input_tokens: int
    output_tokens: int


class MessagesResponse(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentText]
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "refusal"] | None
    stop_sequence: str | None = None
    usage: MessageUsage


class TokenCount(BaseModel):
    input_tokens: int


async def create_message(serving: Serving, req: MessagesRequest) -> MessagesResponse | EventStream:
    serving.limit_max_tokens(req.max_tokens, "max_tokens")
    public, gen = await _prompt(serving, req, req.metadata.user_id if req.metadata else None, "top_k", "container",
                                "diagnostics")
    # what the request leaves out (stop_sequences, temperature, top_p, the seed) comes from the deploy's --generation.*
    gen.params = serving.sampling(req.max_tokens, req.temperature, req.top_p, req.stop_sequences, None, 1, False, 0)
    rid = f"msg_{uuid.uuid4().hex}"
    if req.stream:
        return await serving.stream(gen, public, "max_tokens", lambda generation: _events(generation, rid, public))
    answers = await serving.collect([gen], public, "max_tokens")
    a = answers.choices[0]
    return MessagesResponse(id=rid, model=public, content=[ContentText(text=a.text)],
                            stop_reason=_stop_reason(a.finish_reason, a.stop), stop_sequence=a.stop,
                            usage=MessageUsage(input_tokens=answers.prompt_tokens, output_tokens=a.completion_tokens))


async def count_tokens(serving: Serving, req: CountTokensRequest) -> TokenCount:
    """The prompt's length as /v1/messages renders it (system, messages, a prefill), so it equals that route's
    usage.input_tokens for the same request. Nothing is generated: no slot is taken, no key is charged."""
    _, gen = await _prompt(serving, req, None, count=False)  # not a request a version answers: not counted as one
    with engine_errors():
        return TokenCount(input_tokens=len(serving.engine.prompt_ids(gen)))


async def _prompt(serving: Serving, req: CountTokensRequest, user: str | None,
                  *refused: str, count: bool = True) -> tuple[str, GenerationRequest]:
    """(the model's public name, the GenerationRequest of the request's prompt): what is not served refused by name,
    the system prompt first, a last assistant message as the prefix the answer continues, images read."""
    refuse_unencodable(req.model_dump(exclude_none=True))
    for param in (*refused, "tools", "tool_choice", "thinking", "output_config"):
        if getattr(req, param) is not None:
            raise APIError(400, f"{param} is not supported on /v1/messages here (text in, text out); leave it out"
                           + ("; tools are served on /v1/chat/completions" if param.startswith("tool") else ""),
                           param=param)
    public, model = serving.model(req.model, user, count)
    if req.messages[0].role != "user":
        raise APIError(400, "messages[0].role: the first message must be the user's", param="messages[0].role")
    vision = serving.engine.accepts_images(model)
    wanted: list[tuple[str, str]] = []  # (param, image URL) of each image block, in order
    messages = [{"role": m.role, "content": _parts(m.content, f"messages[{i}].content", wanted)
                 if vision and m.role == "user" and _has_images(m.content)
                 else _text(m.content, f"messages[{i}].content")} for i, m in enumerate(req.messages)]
    prefix = messages.pop()["content"] if messages[-1]["role"] == "assistant" else None
    if req.system:
        messages.insert(0, {"role": "system", "content": _text(req.system, "system")})
    images = await serving.read_images(wanted) if wanted else None
    return public, GenerationRequest(messages=messages, model=model, assistant_prefix=prefix, images=images)


def _stop_reason(finish_reason: str | None, stop: str | None) -> str:
    return "stop_sequence" if stop is not None else STOP_REASON.get(finish_reason or "stop", "end_turn")


def _text(content: str | list, param: str) -> str:
    if isinstance(content, str):
        return content
    for block in content:
        if not isinstance(block, TextBlock):  # a text model's images too (a vision model's: _parts)
            raise APIError(400, f"{param}: {block.type!r} blocks are not supported; this server reads text blocks",
                           param=param)
    return "".join(block.text for block in content)


def _has_images(content: str | list) -> bool:
    return isinstance(content, list) and any(b.type == "image" for b in content if not isinstance(b, TextBlock))


def _parts(content: list, param: str, wanted: list[tuple[str, str]]) -> list[dict]:
    """A vision model's user turn: text blocks and image blocks in order, each image as {"type": "image"}; the
    image's URL (a data: URI for a base64 source) joins `wanted`."""
    out: list[dict] = []
    for j, block in enumerate(content):
        if isinstance(block, TextBlock):
            out.append({"type": "text", "text": block.text})
            continue
        where = f"{param}[{j}]"
        if block.type != "image":
            raise APIError(400, f"{where}: {block.type!r} blocks are not supported; this server reads text and image "
                           "blocks", param=where)
        source = block.source if isinstance(block, ImageBlock) else {}
        kind = source.get("type")
        if kind == "base64" and isinstance(source.get("data"), str) and isinstance(source.get("media_type"), str):
            url = f"data:{source['media_type']};base64,{source['data']}"
        elif kind == "url" and isinstance(source.get("url"), str):
            url = source["url"]
        else:
            raise APIError(400, f"{where}.source: expected {{\"type\": \"base64\", \"media_type\": \"image/png\", "
                           "\"data\": ...} or {\"type\": \"url\", \"url\": ...}", param=f"{where}.source")
        wanted.append((f"{where}.source", url))
        out.append({"type": "image"})
    return out


def _event(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"


async def _events(generation: Generation, rid: str, public: str) -> AsyncIterator[str]:
    """Anthropic's sequence: message_start, content_block_start, content_block_delta per piece, content_block_stop,
    message_delta (stop_reason, output tokens), message_stop; a failure after the 200 is an `error` event."""
    usage = {"input_tokens": generation.answers.prompt_tokens, "output_tokens": 0}
    message = {"id": rid, "type": "message", "role": "assistant", "model": public, "content": [], "stop_reason": None,
               "stop_sequence": None, "usage": usage}
    try:
        yield _event("message_start", {"message": message})
        yield _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        reason, stop = "end_turn", None
        async for delta, answer in generation.deltas():
            if delta.text:
                yield _event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": delta.text}})
            if delta.finish_reason is not None:
                reason, stop = _stop_reason(delta.finish_reason, delta.stop), delta.stop
        yield _event("content_block_stop", {"index": 0})
        yield _event("message_delta", {"delta": {"stop_reason": reason, "stop_sequence": stop},
                                       "usage": {"output_tokens": generation.answers.completion_tokens}})
        yield _event("message_stop", {})
    except Exception as err:  # noqa: BLE001 - mid-stream the status is sent: report in the stream
        yield _event("error", stream_error(err))
    finally:
        await generation.close()
