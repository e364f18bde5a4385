"""POST /v1/chat/completions, with no HTTP: a ChatCompletionRequest in, a ChatCompletionResponse or the SSE lines
of its chunks out.

    reply = await create_chat_completion(serving, ChatCompletionRequest(model="prd", messages=[...]))
    # with stream=True an EventStream of "data: {...}\\n\\n" lines ending "data: [DONE]"

Here: OpenAI messages as chat templates take them, what chat cannot do refused by name, reasoning split out of the
answer text into `reasoning_content` (as vLLM and DeepSeek return it; templates/reasoning.py), tool calls parsed
out of the rest, and the exact chunk sequence OpenAI sends.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import AsyncIterator

from pydantic import ValidationError

from tunesmith.errors import TemplateError
from tunesmith.infer.types import GenerationRequest, TokenLogprob
from tunesmith.serve import tool_parsers
from tunesmith.serve.errors import APIError, stream_error, validation_message
from tunesmith.serve.guardrails import CONTENT_FILTER
from tunesmith.serve.protocol import (
    AssistantMessage,
    AssistantTurn,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChoiceLogprobs,
    DeltaMessage,
    FunctionCall,
    ImagePart,
    JSONSchemaFormat,
    OtherPart,
    SystemMessage,
    TextPart,
    TokenLogprobOut,
    ToolCall,
    ToolCallDelta,
    ToolMessage,
    TopLogprob,
    Usage,
    UserMessage,
)
from tunesmith.serve.serving import (
    DONE,
    Answer,
    EventStream,
    Framing,
    Generation,
    Serving,
    refuse_stream_options_without_stream,
    refuse_unencodable,
    sse,
)
from tunesmith.templates.chat import check_kwargs
from tunesmith.templates.reasoning import ReasoningSplit


async def create_chat_completion(serving: Serving, req: ChatCompletionRequest) -> ChatCompletionResponse | EventStream:
    refuse_unencodable(req.model_dump(exclude_none=True))
    public, model = serving.model(req.model, req.user)
    serving.refuse_unsupported(req.frequency_penalty, req.presence_penalty, req.logit_bias)
    _refuse_openai_options_not_served(req)
    refuse_stream_options_without_stream(req.stream, req.stream_options)
    if req.tools and req.tool_choice != "none":  # "none" renders no tools: any template answers it
        _refuse_tools_the_template_drops(serving, model, public)
    _refuse_calls_the_template_drops(serving, model, public, req.messages)
    response_format = _response_format(req)
    forced = _forced_call(serving, req, model, public)
    if forced and response_format:
        raise APIError(400, "tool_choice: a forced tool call and response_format cannot be combined; leave one out",
                       param="tool_choice")
    response_format = forced or response_format
    if req.top_logprobs and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    for param in ("max_completion_tokens", "max_tokens"):
        serving.limit_max_tokens(getattr(req, param), param)
    asked = "max_completion_tokens" if req.max_completion_tokens else "max_tokens" if req.max_tokens else None
    use_tools = bool(req.tools) and req.tool_choice != "none"
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if use_tools and req.tools else None
    params = serving.sampling(req.max_completion_tokens or req.max_tokens, req.temperature, req.top_p, req.stop,
                              req.seed, req.n, bool(req.logprobs), req.top_logprobs or 0)
    vision = serving.engine.accepts_images(model)
    messages = _messages(req.messages, vision)
    images = await read_images(serving, req.messages) if vision else None
    gen = GenerationRequest(messages=messages, tools=tools, model=model, params=params,
                            chat_template_kwargs=_template_kwargs(req.chat_template_kwargs),
                            response_format=response_format, images=images or None)
    tool_names = {t["function"]["name"] for t in tools} if tools else set()
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await serving.stream(gen, public, asked, lambda generation: _events(
            generation, rid, created, public, req.n, bool(req.logprobs), include_usage, tool_names,
            [serving.engine.reasoning(gen) for _ in range(req.n)]))  # after start: gen.prompt_ids are set
    answers = await serving.collect([gen], public, asked)
    choices = [_choice(i, a, tool_names, bool(req.logprobs), serving.engine.reasoning(gen))
               for i, a in enumerate(answers.choices)]
    return ChatCompletionResponse(id=rid, created=created, model=public, choices=choices, usage=answers.usage())


# OpenAI options that no engine here honours, and what to do instead; an option a client sends for a model that
# lacks it is a 400 naming it at OpenAI too, never an unrecognized argument
WHY_NOT_SERVED = {
    "audio": "audio: spoken answers are not served here (text only); leave it out",
    "function_call": "function_call is OpenAI's deprecated form of tool_choice; send tool_choice instead",
    "functions": "functions is OpenAI's deprecated form of tools; send tools instead",
    "prediction": "prediction (predicted outputs) is not supported here; leave it out",
    "reasoning_effort": "reasoning_effort is not supported here: a model's reasoning follows its chat template "
                        "(chat_template_kwargs, e.g. {\"enable_thinking\": false}, turns it off where the template "
                        "allows); leave it out",
    "verbosity": "verbosity is not supported here; leave it out (ask for brevity in the prompt, or set max_tokens)",
    "web_search_options": "web_search_options: web search is not supported here; leave it out",
}


def _refuse_openai_options_not_served(req: ChatCompletionRequest) -> None:
    for param, why in WHY_NOT_SERVED.items():
        if getattr(req, param) is not None:
            raise APIError(400, why, param=param)
    if req.modalities and "audio" in req.modalities:
        raise APIError(400, "modalities: audio answers are not served here; ask for [\"text\"] or leave it out",
                       param="modalities")


def _refuse_tools_the_template_drops(serving: Serving, model: str | None, public: str) -> None:
    """Tools reach the model only through its chat template; one that renders none would answer as if no tools had
    been given, and the client would wait for calls that never come."""
    template = serving.engine.template_for(model)
    if template is not None and not template.renders_tools:
        raise APIError(400, f"tools: the chat template of {public} cannot render tools (its prompt is the same with "
                       "them or without), so the model would never see them. Serve a model whose chat template "
                       "renders tools (Qwen2.5, Llama 3.1, Mistral...), or put such a template in the model folder's "
                       "chat_template.jinja; or leave tools out (tool_choice \"none\" sends none)", param="tools")


def _refuse_calls_the_template_drops(serving: Serving, model: str | None, public: str, messages: list) -> None:
    """An earlier assistant turn's tool_calls reach the model only through its chat template; one that renders an
    assistant turn's content alone would drop them unseen (the model answers as if it had never called)."""
    calling = next((i for i, m in enumerate(messages) if isinstance(m, AssistantTurn) and m.tool_calls), None)
    if calling is None:
        return
    template = serving.engine.template_for(model)
    if template is not None and not template.renders_calls:
        raise APIError(400, f"messages[{calling}].tool_calls: the chat template of {public} cannot render tool calls, "
                       "so the model would never see this one. Serve a model whose chat template renders them "
                       "(Qwen2.5, Llama 3.1, Mistral...), or give the call's result as text", param=f"messages[{calling}].tool_calls")


def _forced_call(serving: Serving, req: ChatCompletionRequest, model: str | None, public: str) -> dict | None:
    """tool_choice "required" (one call to any of the tools) or a named function (one call to it): a grammar that
    writes the call as the model's chat template writes calls, its arguments valid for the tool's parameters schema
    (infer/tool_grammar.py). None for "auto" and "none"."""
    choice = req.tool_choice
    if choice in (None, "auto", "none"):
        return None
    if not req.tools:
        raise APIError(400, "tool_choice: forcing a call needs tools", param="tool_choice")
    if req.logprobs:
        raise APIError(400, "logprobs with a forced tool call: not supported; leave one out", param="logprobs")
    name = None if choice == "required" else choice.function.name
    if name is not None and name not in {t.function.name for t in req.tools}:
        raise APIError(400, f"tool_choice: function {name!r} is not one of the request's tools", param="tool_choice")
    from tunesmith.infer.grammar import GrammarError
    from tunesmith.infer.tool_grammar import call_frame, tool_call_grammar

    template = serving.engine.template_for(model)
    frame = call_frame(template)
    if frame is None:
        raise APIError(400, f"tool_choice: {public}'s chat template writes no tool call as a JSON object holding the "
                       "name and the arguments, which forcing a call needs; use tool_choice 'auto'",
                       param="tool_choice")
    try:
        grammar = tool_call_grammar(frame, [t.model_dump(exclude_none=True) for t in req.tools], name,
                                    template.tokenizer)
    except GrammarError as err:
        raise APIError(400, str(err), param="tool_choice") from None
    return {"type": "tool_call", "grammar": grammar}


def _response_format(req: ChatCompletionRequest) -> dict | None:
    """json_object / json_schema, checked now (a schema the grammar cannot take is a 400 naming it); None for text.
    The engine turns it into a grammar on the logits (infer/grammar.py)."""
    if req.response_format is None or req.response_format.type == "text":
        return None
    if req.logprobs:
        raise APIError(400, "logprobs with response_format: not supported; leave one out", param="logprobs")
    from tunesmith.infer.grammar import GrammarError, compile_response_format

    fmt = {"type": req.response_format.type}
    if fmt["type"] == "json_schema":
        if req.response_format.json_schema is None:  # pydantic would call the body itself no JSON object
            raise APIError(400, "response_format.json_schema: required when type is json_schema ({\"name\": ..., "
                           "\"schema\": {...}})", param="response_format")
        try:
            spec = JSONSchemaFormat.model_validate(req.response_format.json_schema)
        except ValidationError as err:
            message, param = validation_message(err.errors())
            raise APIError(400, f"response_format.json_schema: {message}", param="response_format") from None
        fmt["json_schema"] = spec.model_dump(by_alias=True, exclude_none=True)
    try:
        compile_response_format(fmt)
    except GrammarError as err:
        raise APIError(400, f"response_format.{err}", param="response_format") from None
    return fmt


def _template_kwargs(kwargs: dict | None) -> dict | None:
    """The request's chat_template_kwargs, refused by name when they would replace what tunesmith passes the
    template itself. The deploy's --chat-template-kwargs and the run's saved ones are the template's own (under
    these)."""
    try:
        return check_kwargs(kwargs) or None
    except TemplateError as err:
        raise APIError(400, str(err), param="chat_template_kwargs") from None


def _choice(index: int, a: Answer, tool_names: set[str], logprobs: bool, split: ReasoningSplit | None) -> ChatChoice:
    if a.finish_reason == CONTENT_FILTER:  # an output guardrail blocked the answer: its refusal instead
        return ChatChoice(index=index, message=AssistantMessage(content=a.text, refusal=a.text),
                          finish_reason=CONTENT_FILTER)
    reasoning, text = (None, a.text) if split is None else split.whole(a.text)
    parsed = tool_parsers.parse_tool_calls(text, tool_names) if tool_names else None
    lp = ChoiceLogprobs(content=_logprobs(a.logprobs)) if logprobs else None
    if parsed is None:
        return ChatChoice(index=index, message=AssistantMessage(content=text, reasoning_content=reasoning),
                          logprobs=lp, finish_reason=a.finish_reason)
    calls = [ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)) for c in parsed.calls]
    return ChatChoice(index=index, message=AssistantMessage(content=parsed.content, tool_calls=calls,
                                                            reasoning_content=reasoning),
                      logprobs=lp, finish_reason="tool_calls")


async def _events(generation: Generation, rid: str, created: int, public: str, n: int, logprobs: bool,
                  include_usage: bool, tool_names: set[str], splits: list[ReasoningSplit | None]) -> AsyncIterator[str]:
    """OpenAI's sequence: a role chunk per choice, content chunks, a finish chunk per choice (tool calls just
    before it), a usage-only chunk when asked for, then [DONE]. Reasoning goes out as reasoning_content pieces (vLLM's
    delta.reasoning_content), the rest as content. Content that may be a tool call is held back until its choice
    ends, then sent as tool_calls or, when it was plain text after all, as content."""

    exclude = None if include_usage else {"usage"}

    def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> str:
        c = ChatCompletionChunk(id=rid, created=created, model=public, choices=choices, usage=usage)
        return sse(c.model_dump_json(exclude=exclude))

    # a chunk of content alone, the one sent per token, from a template (the same JSON; serving.Framing)
    content_only = Framing(lambda i, text: ChatCompletionChunk(
        id=rid, created=created, model=public, choices=[ChatChunkChoice(index=i, delta=DeltaMessage(content=text))]),
        exclude).text

    sent = [0] * n  # characters of each choice's content already sent
    content = [""] * n  # each choice's text so far, its reasoning split out
    try:
        for i in range(n):
            yield chunk([ChatChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=""))])
        async for delta, _ in generation.deltas():
            i, final = delta.index, delta.finish_reason is not None
            if delta.finish_reason == CONTENT_FILTER:  # blocked: the refusal after what was sent (it broke no rule)
                refusal = DeltaMessage(content=delta.text, refusal=delta.text)
                yield chunk([ChatChunkChoice(index=i, delta=refusal)])
                yield chunk([ChatChunkChoice(index=i, delta=DeltaMessage(), finish_reason=CONTENT_FILTER)])
                continue
            thought, text = ("", delta.text) if splits[i] is None else splits[i].feed(delta.text, final=final)
            content[i] += text
            held = tool_parsers.call_start(content[i], tool_names) if tool_names else None
            visible = len(content[i]) if held is None else held
            piece = content[i][sent[i]:visible] if visible > sent[i] else ""
            lp = ChoiceLogprobs(content=_logprobs(delta.logprobs)) if logprobs and delta.logprobs else None
            if piece and not thought and lp is None:
                sent[i] += len(piece)
                yield content_only(i, piece)
            elif thought or piece or lp:
                sent[i] += len(piece)
                said = DeltaMessage(reasoning_content=thought or None, content=piece if piece or not thought else None)
                yield chunk([ChatChunkChoice(index=i, delta=said, logprobs=lp)])
            if not final:
                continue
            parsed = tool_parsers.parse_tool_calls(content[i], tool_names) if tool_names else None
            start = tool_parsers.call_start(content[i], tool_names) if parsed else None
            rest = content[i][sent[i]:start]
            if rest and (parsed is None or rest.strip()):
                yield content_only(i, rest)
            if parsed is not None:
                calls = [ToolCallDelta(index=k, id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
                         for k, c in enumerate(parsed.calls)]
                yield chunk([ChatChunkChoice(index=i, delta=DeltaMessage(tool_calls=calls))])
            reason = "tool_calls" if parsed else delta.finish_reason
            yield chunk([ChatChunkChoice(index=i, delta=DeltaMessage(), finish_reason=reason)])
        if include_usage:
            yield chunk([], generation.answers.usage())
    except Exception as err:  # noqa: BLE001 - mid-stream the status is sent: report in the stream, keep serving
        yield sse(json.dumps(stream_error(err)))
    finally:
        await generation.close()
    yield DONE


# -----------------------------------------------------------------------------
# Messages and logprobs in OpenAI's shapes


def _messages(messages: list[SystemMessage | UserMessage | AssistantTurn | ToolMessage],
              vision: bool = False) -> list[dict]:
    """OpenAI messages as chat templates take them: text content, `developer` as `system`, tool-call arguments as
    objects (what Hugging Face templates expect; OpenAI sends them as JSON text). For a vision model a user message
    with images keeps its parts in order, each image as {"type": "image"} (read_images reads the pictures)."""
    out = []
    for i, m in enumerate(messages):
        content = _parts(m, i) if vision and _other_parts(m) else _text(m, i)
        msg: dict = {"role": "system" if m.role == "developer" else m.role, "content": content}
        if getattr(m, "name", None):
            msg["name"] = m.name
        if isinstance(m, AssistantTurn) and m.tool_calls:
            msg["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.function.name, "arguments": _loads(c.function.arguments)}}
                                 for c in m.tool_calls]
        if isinstance(m, ToolMessage):
            msg["tool_call_id"] = m.tool_call_id
        out.append(msg)
    return out


def _text(m: SystemMessage | UserMessage | AssistantTurn | ToolMessage, i: int) -> str:
    if isinstance(m.content, str):
        return m.content
    if m.content is None:
        if isinstance(m, AssistantTurn) and m.tool_calls:
            return ""
        raise APIError(400, f"messages[{i}].content: missing (only an assistant message with tool_calls may have "
                       "none)", param=f"messages[{i}].content")
    for part in m.content:
        if isinstance(part, (OtherPart, ImagePart)):  # a text model's request (a vision model's images: _parts)
            raise APIError(400, f"messages[{i}].content: {part.type!r} parts are not supported; this server reads "
                           "text parts only", param=f"messages[{i}].content")
    return "\n".join(part.text for part in m.content)


def _has_images(m: SystemMessage | UserMessage | AssistantTurn | ToolMessage) -> bool:
    return isinstance(m, UserMessage) and isinstance(m.content, list) and any(isinstance(p, ImagePart)
                                                                               for p in m.content)


def _other_parts(m: SystemMessage | UserMessage | AssistantTurn | ToolMessage) -> bool:
    """A user message with parts other than text: a vision model reads its images (and refuses the rest by part)."""
    return isinstance(m, UserMessage) and isinstance(m.content, list) and any(not isinstance(p, TextPart)
                                                                               for p in m.content)


def _parts(m: UserMessage, i: int) -> list[dict]:
    out: list[dict] = []
    for j, part in enumerate(m.content):
        if isinstance(part, OtherPart):
            _refuse_part(part, i, j)
        out.append({"type": "image"} if isinstance(part, ImagePart) else {"type": "text", "text": part.text})
    return out


def _refuse_part(part: OtherPart, i: int, j: int) -> None:
    if part.type == "image_url":
        raise APIError(400, f"messages[{i}].content[{j}].image_url: expected {{\"url\": \"data:image/png;base64,"
                       "...\"}} (or an http(s) URL, or a file under the server's --image-root)",
                       param=f"messages[{i}].content[{j}].image_url")
    raise APIError(400, f"messages[{i}].content[{j}]: {part.type!r} parts are not supported; this server reads text "
                   "and image_url parts", param=f"messages[{i}].content[{j}]")


async def read_images(serving: Serving, messages: list) -> list:
    """The pictures of a vision model's request, in order (Serving.read_images: a 400 names the part it refuses)."""
    wanted = [(f"messages[{i}].content[{j}].image_url", p.image_url.url) for i, m in enumerate(messages)
              if _has_images(m) for j, p in enumerate(m.content) if isinstance(p, ImagePart)]
    return await serving.read_images(wanted)


def _loads(arguments: str) -> object:
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments  # the template shows it as given


def _logprobs(logprobs: list[TokenLogprob]) -> list[TokenLogprobOut]:
    """bytes: the token's own bytes where the engine knows them (a byte-level tokenizer's token may hold part of a
    character: its text is then U+FFFD, its bytes that part, as OpenAI gives them), else its text's UTF-8."""
    return [TokenLogprobOut(token=t.token, logprob=t.logprob, bytes=_bytes(t.token, t.token_bytes),
                            top_logprobs=[TopLogprob(token=s, logprob=v, bytes=_bytes(s, raw))
                                          for (s, v), raw in zip(t.top, t.top_bytes or [None] * len(t.top))])
            for t in logprobs]


def _bytes(text: str, raw: bytes | None) -> list[int]:
    return list(text.encode() if raw is None else raw)
