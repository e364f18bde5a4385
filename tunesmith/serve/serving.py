"""What the server does, with no HTTP: OpenAI requests in, responses or server-sent events out.

    serving = Serving(engine, DeployConfig(max_concurrent=8))
    reply = await serving.chat(ChatCompletionRequest(model="prd", messages=[...]))
    # a ChatCompletionResponse, or with stream=True an EventStream of "data: {...}\\n\\n" lines ending "data: [DONE]"

Here: requests -> GenerationRequests (defaults from the deploy config's `generation`), the limits (max_tokens,
prompt length, concurrency), usage, tool calls parsed out of the answer text, and the exact SSE chunk sequence
OpenAI sends. Errors are APIError(status, message): app.py turns them into OpenAI's error JSON.
routes.py only dispatches to the methods here; tests/serve drives them with a scripted engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tunesmith.config import DeployConfig
from tunesmith.errors import TunesmithError
from tunesmith.infer.types import (
    Delta,
    Engine,
    EngineError,
    GenerationRequest,
    SamplingParams,
    TokenLogprob,
    UnknownModelError,
)
from tunesmith.serve import tool_parsers
from tunesmith.serve.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    ChoiceLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    ErrorInfo,
    ErrorResponse,
    FunctionCall,
    ModelCard,
    ModelList,
    OtherPart,
    TokenLogprobOut,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    Usage,
)

log = logging.getLogger("tunesmith")


class APIError(Exception):
    """An answer other than 200, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return ErrorResponse(error=ErrorInfo(message=message, type=type, param=param, code=code)).model_dump()


# -----------------------------------------------------------------------------
# Metrics: one registry per app, so two apps in one process (tests) count apart


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("tunesmith_requests", "HTTP requests by endpoint and status code.",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("tunesmith_request_latency_seconds", "Time from request to the response's last byte.",
                                 ["endpoint"], registry=r,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.ttft = Histogram("tunesmith_time_to_first_token_seconds", "Time from admission to the first generated text.",
                              ["model"], registry=r, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.generated_tokens = Counter("tunesmith_generated_tokens", "Completion tokens generated.", ["model"], registry=r)
        self.prompt_tokens = Counter("tunesmith_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r)
        self.running = Gauge("tunesmith_requests_running", "Requests producing tokens.", registry=r)
        self.waiting = Gauge("tunesmith_requests_waiting", "Requests admitted, waiting for their first token.", registry=r)


class _Slot:
    """One admitted request: it counts against max_concurrent until released; waiting until its first token, then
    running. Release is idempotent, because a stream can end in several places (done, error, client gone)."""

    def __init__(self, serving: "Serving", model: str):
        self.serving, self.model, self.state = serving, model, "waiting"
        self.started = time.perf_counter()
        serving.active += 1
        serving.metrics.waiting.inc()

    def token(self) -> None:
        if self.state == "waiting":
            m = self.serving.metrics
            m.waiting.dec()
            m.running.inc()
            m.ttft.labels(self.model).observe(time.perf_counter() - self.started)
            self.state = "running"

    def release(self, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        if self.state == "done":
            return
        m = self.serving.metrics
        (m.waiting if self.state == "waiting" else m.running).dec()
        m.prompt_tokens.labels(self.model).inc(prompt_tokens)
        m.generated_tokens.labels(self.model).inc(completion_tokens)
        self.serving.active -= 1
        self.state = "done"


class EventStream:
    """The SSE lines of one streamed answer. Whoever sends them must call aclose() at the end, also when the
    client went away: it stops the generation and frees the request's slot."""

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], Awaitable[None]]):
        self.events, self.on_close = events, on_close

    def __aiter__(self) -> AsyncIterator[str]:
        return self.events

    async def aclose(self) -> None:
        await self.events.aclose()
        await self.on_close()


@dataclass
class _Answer:
    """One choice, gathered from its Deltas."""

    text: str = ""
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    completion_tokens: int = 0


def sse(payload: str) -> str:
    return f"data: {payload}\n\n"


DONE = sse("[DONE]")


# -----------------------------------------------------------------------------
# Serving


class Serving:
    def __init__(self, engine: Engine, cfg: DeployConfig, metrics: Metrics | None = None):
        self.engine, self.cfg = engine, cfg
        self.metrics = metrics or Metrics()
        self.engine_names = engine.model_names()
        # served_model_name renames the default model; the engine keeps its own name for it
        first = cfg.served_model_name or self.engine_names[0]
        self.names = {first: self.engine_names[0], **{n: n for n in self.engine_names[1:] if n != first}}
        self.active = 0

    def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=name) for name in self.names])

    # -------------------------------------------------------------------------
    # Chat completions

    async def chat(self, req: ChatCompletionRequest) -> ChatCompletionResponse | EventStream:
        public, model = self._model(req.model)
        self._refuse_unsupported(req.frequency_penalty, req.presence_penalty, req.logit_bias)
        if req.response_format is not None and req.response_format.type != "text":
            raise APIError(400, f"response_format {req.response_format.type} is not supported: tunesmith's engines "
                           "have no constrained decoding yet. Ask for JSON in the prompt instead, or leave "
                           "response_format out.", param="response_format")
        if req.tool_choice is not None and req.tool_choice not in ("auto", "none"):
            raise APIError(400, "tool_choice: only 'auto' and 'none' are supported (forcing a call needs constrained "
                           "decoding, which tunesmith's engines lack yet)", param="tool_choice")
        if req.top_logprobs and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        use_tools = bool(req.tools) and req.tool_choice != "none"
        tools = [t.model_dump(exclude_none=True) for t in req.tools] if use_tools and req.tools else None
        params = self._params(req.max_completion_tokens or req.max_tokens, req.temperature, req.top_p, req.stop,
                              req.seed, req.n, bool(req.logprobs), req.top_logprobs or 0)
        gen = GenerationRequest(messages=_messages(req.messages), tools=tools, model=model, params=params)
        tool_names = {t["function"]["name"] for t in tools} if tools else set()
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return await self._stream(gen, public, lambda first, deltas, slot, prompt_tokens: self._chat_events(
                rid, created, public, req.n, bool(req.logprobs), include_usage, tool_names, first, deltas, slot,
                prompt_tokens))
        answers, prompt_tokens = await self._collect([gen], public)
        choices = [self._chat_choice(i, a, tool_names, bool(req.logprobs)) for i, a in enumerate(answers)]
        return ChatCompletionResponse(id=rid, created=created, model=public, choices=choices,
                                      usage=_usage(prompt_tokens, answers))

    def _chat_choice(self, index: int, a: _Answer, tool_names: set[str], logprobs: bool) -> ChatChoice:
        parsed = tool_parsers.parse_tool_calls(a.text, tool_names) if tool_names else None
        lp = ChoiceLogprobs(content=_chat_logprobs(a.logprobs)) if logprobs else None
        if parsed is None:
            return ChatChoice(index=index, message=AssistantMessage(content=a.text), logprobs=lp,
                              finish_reason=a.finish_reason)
        calls = [ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)) for c in parsed.calls]
        return ChatChoice(index=index, message=AssistantMessage(content=parsed.content, tool_calls=calls),
                          logprobs=lp, finish_reason="tool_calls")

    async def _chat_events(self, rid: str, created: int, public: str, n: int, logprobs: bool, include_usage: bool,
                           tool_names: set[str], first: Delta, deltas: AsyncIterator[Delta], slot: _Slot,
                           prompt_tokens: int) -> AsyncIterator[str]:
        """OpenAI's sequence: a role chunk per choice, content chunks, a finish chunk per choice (tool calls just
        before it), a usage-only chunk when asked for, then [DONE]. Text that may be a tool call is held back until
        its choice ends, then sent as tool_calls or, when it was plain text after all, as content."""

        def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> str:
            c = ChatCompletionChunk(id=rid, created=created, model=public, choices=choices, usage=usage)
            return sse(c.model_dump_json(exclude=None if include_usage else {"usage"}))

        answers = [_Answer() for _ in range(n)]
        sent = [0] * n  # characters of each choice's text already sent
        try:
            for i in range(n):
                yield chunk([ChatChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=""))])
            async for delta in _prepend(first, deltas):
                slot.token()
                a = answers[delta.index]
                a.text += delta.text
                a.completion_tokens = delta.completion_tokens
                prompt_tokens = max(prompt_tokens, delta.prompt_tokens)
                held = tool_parsers.call_start(a.text) if tool_names else None
                visible = len(a.text) if held is None else held
                piece = a.text[sent[delta.index]:visible] if visible > sent[delta.index] else ""
                lp = ChoiceLogprobs(content=_chat_logprobs(delta.logprobs)) if logprobs and delta.logprobs else None
                if piece or lp:
                    sent[delta.index] += len(piece)
                    yield chunk([ChatChunkChoice(index=delta.index, delta=DeltaMessage(content=piece), logprobs=lp)])
                if delta.finish_reason is None:
                    continue
                a.finish_reason = delta.finish_reason
                parsed = tool_parsers.parse_tool_calls(a.text, tool_names) if tool_names else None
                start = tool_parsers.call_start(a.text) if parsed else None
                rest = a.text[sent[delta.index]:start]
                if rest and (parsed is None or rest.strip()):
                    yield chunk([ChatChunkChoice(index=delta.index, delta=DeltaMessage(content=rest))])
                if parsed is not None:
                    calls = [ToolCallDelta(index=k, id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
                             for k, c in enumerate(parsed.calls)]
                    yield chunk([ChatChunkChoice(index=delta.index, delta=DeltaMessage(tool_calls=calls))])
                reason = "tool_calls" if parsed else delta.finish_reason
                yield chunk([ChatChunkChoice(index=delta.index, delta=DeltaMessage(), finish_reason=reason)])
            if include_usage:
                yield chunk([], _usage(prompt_tokens, answers))
        except Exception as err:  # noqa: BLE001 - mid-stream the status is sent: report in the stream, keep serving
            yield sse(json.dumps(_mid_stream_error(err)))
        finally:
            await deltas.aclose()
            slot.release(prompt_tokens, sum(a.completion_tokens for a in answers))
        yield DONE

    # -------------------------------------------------------------------------
    # Completions (legacy)

    async def completion(self, req: CompletionRequest) -> CompletionResponse | EventStream:
        public, model = self._model(req.model)
        self._refuse_unsupported(req.frequency_penalty, req.presence_penalty, req.logit_bias)
        if req.suffix:
            raise APIError(400, "suffix (fill in the middle) is not supported; leave it out", param="suffix")
        if req.best_of is not None and req.best_of != req.n:
            raise APIError(400, f"best_of={req.best_of} is not supported (only best_of = n); use n", param="best_of")
        if req.echo and req.logprobs is not None:
            raise APIError(400, "echo with logprobs needs prompt logprobs, which tunesmith's engines do not report",
                           param="echo")
        prompts = _prompts(req.prompt)
        if req.stream and len(prompts) > 1:
            raise APIError(400, f"streaming answers one prompt at a time; got {len(prompts)} prompts", param="prompt")
        wants_logprobs = req.logprobs is not None
        params = self._params(req.max_tokens, req.temperature, req.top_p, req.stop, req.seed, req.n, wants_logprobs,
                              req.logprobs or 0)
        gens = [GenerationRequest(prompt=p, model=model, params=params) for p in prompts]
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return await self._stream(gens[0], public, lambda first, deltas, slot, prompt_tokens: self._completion_events(
                rid, created, public, req, include_usage, first, deltas, slot, prompt_tokens))
        answers, prompt_tokens = await self._collect(gens, public)
        choices = []
        for k, a in enumerate(answers):  # prompt p's choices are p*n ... p*n + n-1, as OpenAI numbers them
            echo = prompts[k // req.n] if req.echo else ""
            lp = _completion_logprobs(a.logprobs, req.logprobs or 0) if wants_logprobs else None
            choices.append(CompletionChoice(text=echo + a.text, index=k, logprobs=lp, finish_reason=a.finish_reason))
        return CompletionResponse(id=rid, created=created, model=public, choices=choices,
                                  usage=_usage(prompt_tokens, answers))

    async def _completion_events(self, rid: str, created: int, public: str, req: CompletionRequest,
                                 include_usage: bool, first: Delta, deltas: AsyncIterator[Delta], slot: _Slot,
                                 prompt_tokens: int) -> AsyncIterator[str]:
        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
            c = CompletionResponse(id=rid, created=created, model=public, choices=choices, usage=usage)
            return sse(c.model_dump_json(exclude=None if include_usage else {"usage"}))

        answers = [_Answer() for _ in range(req.n)]
        try:
            if req.echo:
                for i in range(req.n):
                    yield chunk([CompletionChoice(text=req.prompt if isinstance(req.prompt, str) else req.prompt[0],
                                                  index=i)])
            async for delta in _prepend(first, deltas):
                slot.token()
                a = answers[delta.index]
                a.text += delta.text
                a.completion_tokens = delta.completion_tokens
                prompt_tokens = max(prompt_tokens, delta.prompt_tokens)
                lp = _completion_logprobs(delta.logprobs, req.logprobs or 0) if req.logprobs is not None else None
                if delta.text or lp:
                    yield chunk([CompletionChoice(text=delta.text, index=delta.index, logprobs=lp)])
                if delta.finish_reason is not None:
                    yield chunk([CompletionChoice(text="", index=delta.index, finish_reason=delta.finish_reason)])
            if include_usage:
                yield chunk([], _usage(prompt_tokens, answers))
        except Exception as err:  # noqa: BLE001 - see _chat_events
            yield sse(json.dumps(_mid_stream_error(err)))
        finally:
            await deltas.aclose()
            slot.release(prompt_tokens, sum(a.completion_tokens for a in answers))
        yield DONE

    # -------------------------------------------------------------------------
    # Shared: models, parameters, limits, running the engine

    def _model(self, name: str | None) -> tuple[str, str]:
        """(the name answers carry, the engine's name for it)."""
        public = next(iter(self.names)) if name is None else name
        if public in self.names:
            return public, self.names[public]
        raise APIError(404, f"The model `{name}` does not exist here; served models: {', '.join(self.names)}",
                       param="model", code="model_not_found")

    def _refuse_unsupported(self, frequency_penalty: float | None, presence_penalty: float | None,
                            logit_bias: dict | None) -> None:
        for param, value in (("frequency_penalty", frequency_penalty), ("presence_penalty", presence_penalty)):
            if value:
                raise APIError(400, f"{param} is not supported by tunesmith's engines; leave it out or set it to 0",
                               param=param)
        if logit_bias:
            raise APIError(400, "logit_bias is not supported by tunesmith's engines; leave it out", param="logit_bias")

    def _params(self, max_tokens: int | None, temperature: float | None, top_p: float | None,
                stop: str | list[str] | None, seed: int | None, n: int, logprobs: bool, top_logprobs: int) -> SamplingParams:
        """What the request leaves out comes from the deploy config's `generation` section."""
        g, limit = self.cfg.generation, self.cfg.max_tokens_limit
        if max_tokens is not None and max_tokens > limit:
            raise APIError(400, f"max_tokens is {max_tokens}, more than this server allows ({limit}); ask for at most "
                           f"{limit}, or restart the server with a higher --max-tokens-limit", param="max_tokens")
        stops = [stop] if isinstance(stop, str) else list(g.stop if stop is None else stop)
        return SamplingParams(max_tokens=min(g.max_tokens, limit) if max_tokens is None else max_tokens,
                              temperature=g.temperature if temperature is None else temperature,
                              top_p=g.top_p if top_p is None else top_p, stop=[s for s in stops if s],
                              seed=g.seed if seed is None else seed, n=n, logprobs=logprobs, top_logprobs=top_logprobs)

    def _admit(self, gens: list[GenerationRequest], model: str) -> tuple[_Slot, int]:
        """Count the prompt (also how an unknown model or a template error shows up, before any work), check the
        limits, take a slot."""
        with _engine_errors():
            prompt_tokens = [self.engine.count_prompt_tokens(g) for g in gens]
        limit = self.cfg.max_prompt_tokens
        if limit is not None and max(prompt_tokens) > limit:
            raise APIError(400, f"the prompt is {max(prompt_tokens)} tokens, more than this server accepts ({limit} "
                           "tokens); shorten it, or restart the server with a higher --max-prompt-tokens",
                           param="messages" if gens[0].messages is not None else "prompt",
                           code="context_length_exceeded")
        if self.active >= self.cfg.max_concurrent:
            raise APIError(429, f"the server is answering {self.active} requests, its limit (--max-concurrent); "
                           "retry after a second", type="rate_limit_exceeded", code="rate_limit_exceeded",
                           headers={"Retry-After": "1"})
        return _Slot(self, model), sum(prompt_tokens)

    async def _stream(self, gen: GenerationRequest, public: str,
                      events: Callable[[Delta, AsyncIterator[Delta], _Slot, int], AsyncIterator[str]]) -> EventStream:
        """Start generating and wait for the first Delta before answering, so errors at the start still get their
        own status code (404, 500) instead of a 200 with an error inside."""
        slot, prompt_tokens = self._admit([gen], public)
        deltas = self.engine.stream(gen)
        try:
            with _engine_errors():
                first = await anext(deltas)
        except BaseException:  # includes StopAsyncIteration and cancellation: free everything
            await deltas.aclose()
            slot.release()
            raise

        async def close() -> None:
            await deltas.aclose()
            slot.release()

        return EventStream(events(first, deltas, slot, prompt_tokens), close)

    async def _collect(self, gens: list[GenerationRequest], public: str) -> tuple[list[_Answer], int]:
        """Run every GenerationRequest to the end (prompt p's choices at p*n + i); returns answers, prompt tokens."""
        slot, prompt_tokens = self._admit(gens, public)
        answers: list[_Answer] = []
        try:
            with _engine_errors():
                for found in await asyncio.gather(*[self._gather(g, slot) for g in gens]):
                    answers += found
        finally:
            slot.release(prompt_tokens, sum(a.completion_tokens for a in answers))
        return answers, prompt_tokens

    async def _gather(self, gen: GenerationRequest, slot: _Slot) -> list[_Answer]:
        answers = [_Answer() for _ in range(gen.params.n)]
        deltas = self.engine.stream(gen)
        try:
            async for delta in deltas:
                slot.token()
                a = answers[delta.index]
                a.text += delta.text
                a.logprobs += delta.logprobs
                a.completion_tokens = delta.completion_tokens
                if delta.finish_reason is not None:
                    a.finish_reason = delta.finish_reason
        finally:
            await deltas.aclose()
        if any(a.finish_reason is None for a in answers):
            raise EngineError("the engine ended a choice without a finish_reason")
        return answers


# -----------------------------------------------------------------------------
# Helpers


@contextlib.contextmanager
def _engine_errors():
    """The engine's exceptions as the statuses OpenAI would answer."""
    try:
        yield
    except APIError:
        raise
    except UnknownModelError as err:
        raise APIError(404, str(err), param="model", code="model_not_found") from err
    except EngineError as err:
        log.error("generation failed: %s", err)
        raise APIError(500, f"generation failed: {err}", type="server_error") from err
    except TunesmithError as err:  # e.g. a TemplateError: the messages do not fit the model's chat template
        raise APIError(400, str(err), param="messages") from err
    except StopAsyncIteration as err:
        raise APIError(500, "the engine produced no output", type="server_error") from err


def _mid_stream_error(err: Exception) -> dict:
    if isinstance(err, EngineError):
        log.error("generation failed mid-stream: %s", err)
        return error_body(f"generation failed: {err}", "server_error")
    log.exception("unexpected error mid-stream")
    return error_body(f"internal error: {type(err).__name__}: {err}", "server_error")


async def _prepend(first: Delta, rest: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    yield first
    async for delta in rest:
        yield delta


def _usage(prompt_tokens: int, answers: list[_Answer]) -> Usage:
    completion = sum(a.completion_tokens for a in answers)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion)


def _messages(messages: list[ChatMessage]) -> list[dict]:
    """OpenAI messages as chat templates take them: text content, `developer` as `system`, tool-call arguments as
    objects (what Hugging Face templates expect; OpenAI sends them as JSON text)."""
    out = []
    for i, m in enumerate(messages):
        msg: dict = {"role": "system" if m.role == "developer" else m.role, "content": _text(m, i)}
        if m.name:
            msg["name"] = m.name
        if m.tool_calls:
            msg["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.function.name, "arguments": _loads(c.function.arguments)}}
                                 for c in m.tool_calls]
        if m.tool_call_id:
            msg["tool_call_id"] = m.tool_call_id
        out.append(msg)
    return out


def _text(m: ChatMessage, i: int) -> str:
    if isinstance(m.content, str):
        return m.content
    if m.content is None:
        if m.role == "assistant" and m.tool_calls:
            return ""
        raise APIError(400, f"messages[{i}].content: missing (only an assistant message with tool_calls may have "
                       "none)", param=f"messages[{i}].content")
    for part in m.content:
        if isinstance(part, OtherPart):
            raise APIError(400, f"messages[{i}].content: {part.type!r} parts are not supported; this server reads "
                           "text parts only", param=f"messages[{i}].content")
    return "\n".join(part.text for part in m.content)


def _loads(arguments: str) -> object:
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments  # the template shows it as given


def _prompts(prompt: str | list) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if not prompt:
        raise APIError(400, "prompt: empty list", param="prompt")
    raise APIError(400, "prompt: token-id prompts are not supported; send the text", param="prompt")


def _chat_logprobs(logprobs: list[TokenLogprob]) -> list[TokenLogprobOut]:
    return [TokenLogprobOut(token=t.token, logprob=t.logprob, bytes=list(t.token.encode()),
                            top_logprobs=[TopLogprob(token=s, logprob=v, bytes=list(s.encode())) for s, v in t.top])
            for t in logprobs]


def _completion_logprobs(logprobs: list[TokenLogprob], top: int) -> CompletionLogprobs:
    offsets, at = [], 0
    for t in logprobs:
        offsets.append(at)
        at += len(t.token)
    return CompletionLogprobs(tokens=[t.token for t in logprobs], token_logprobs=[t.logprob for t in logprobs],
                              top_logprobs=[dict(t.top) for t in logprobs] if top else None, text_offset=offsets)
