"""The HTTP routes: each parses its body into a protocol.py schema (embeddings.py, rerank.py and classify.py hold
their own) and hands it to chat.py, completion.py, embeddings.py, rerank.py, classify.py or serving.py; `responses=`
is what /openapi.json lists (openapi.py)."""

from __future__ import annotations

import asyncio
import contextlib
import functools

import anyio
from fastapi import APIRouter, Request
from starlette.requests import ClientDisconnect
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from tunesmith.serve.chat import create_chat_completion
from tunesmith.serve.classify import ClassificationRequest, ClassificationResponse, create_classification
from tunesmith.serve.completion import create_completion
from tunesmith.serve.context import BODY_SEND, current
from tunesmith.serve.embeddings import EmbeddingRequest, EmbeddingResponse, create_embeddings
from tunesmith.serve.errors import error_body
from tunesmith.serve.messages import (
    CountTokensRequest,
    MessagesRequest,
    MessagesResponse,
    TokenCount,
    count_tokens,
    create_message,
)
from tunesmith.serve.openapi import answers
from tunesmith.serve.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
)
from tunesmith.serve.rerank import RerankRequest, RerankResponse, ScoreRequest, ScoreResponse, create_rerank, create_score
from tunesmith.serve.serving import EventStream, Serving

router = APIRouter()


class Health(BaseModel):
    status: str  # ok, draining (after SIGTERM) or unavailable
    reason: str | None = None  # why the engine cannot generate


class SSEResponse(StreamingResponse):
    """Sends an EventStream and always closes it: on the last line, on error, and when the client disconnects
    (Starlette then cancels the sending task), so the generation stops and the request's slot is freed.

    The status line goes through every middleware; the body lines, one per token, go to the send the Gate was
    given (app.py puts it in the scope as BODY_SEND), past Starlette's exception wrappers and the Gate's status
    check, which look at the response's start only: four calls fewer per token on the event loop."""

    def __init__(self, stream: EventStream):
        super().__init__(stream, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.stream = stream
        self.body_send = None
        self.sent_all = False

    async def __call__(self, scope, receive, send) -> None:
        self.body_send = scope.get(BODY_SEND)
        try:
            await super().__call__(scope, receive, send)
        except ClientDisconnect:  # ASGI >= 2.4: the send failed
            _client_closed()
            raise
        else:
            if not self.sent_all:  # Starlette cancelled the sending when the client disconnected
                _client_closed()
        finally:
            with anyio.CancelScope(shield=True):
                await self.stream.aclose()

    async def stream_response(self, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        body = self.body_send or send
        async for line in self.body_iterator:
            await body({"type": "http.response.body", "body": line.encode(), "more_body": True})
        await body({"type": "http.response.body", "body": b"", "more_body": False})
        self.sent_all = True


def _client_closed() -> None:
    """The Gate (app.py) counts this request as 499 in /metrics: its 200 was sent, but the client left the stream."""
    ctx = current()
    if ctx is not None:
        ctx.client_closed = True


def _serving(request: Request) -> Serving:
    return request.app.state.serving


def cancelled_on_disconnect(handler):
    """Stop a generation route's work when its client goes away before the answer is ready: a whole (not streamed)
    answer, or a stream still waiting for its first token. Starlette cancels nothing until the response is sent, so
    the engine would generate the abandoned answer to its end, holding a slot, while a client that timed out sends
    it again (the openai SDK retries twice). vLLM's api_server does the same (with_cancellation). Streams that
    started are stopped by SSEResponse."""

    @functools.wraps(handler)
    async def wrapper(body, request: Request):
        work = asyncio.ensure_future(handler(body, request))
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            await asyncio.wait([work, gone], return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this request is cancelled (a forced shutdown): nothing generates on behind it
            gone.cancel()
            if not work.done():
                work.cancel()  # the engine's streams close, the batch drops the requests, the slot is freed
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
        if not work.cancelled():
            return work.result()
        # nobody reads this; /metrics counts it as 499 (nginx's "client closed request")
        return JSONResponse(error_body("the client closed the connection before the answer was ready",
                                       code="client_closed_request"), status_code=499)

    return wrapper


async def _client_gone(request: Request) -> None:
    """Returns once the client disconnects. FastAPI has read the body already, so the next message is the
    disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _respond(result):
    if isinstance(result, EventStream):
        return SSEResponse(result)
    return JSONResponse(result.model_dump(mode="json"))


@router.get("/health", response_model=Health, responses=answers(503, ok=Health))
async def health(request: Request):
    reason = await anyio.to_thread.run_sync(_serving(request).engine.health)
    if reason is None:
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503, headers={"Retry-After": "5"})


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}},
                                                                  "description": "Prometheus text format."}})
async def metrics(request: Request) -> Response:
    return Response(generate_latest(_serving(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models", response_model=ModelList, responses=answers(503))
async def models(request: Request) -> ModelList:
    return _serving(request).models()


@router.get("/v1/models/{model:path}", response_model=ModelCard, responses=answers(404, 503))
async def model(model: str, request: Request) -> ModelCard:
    """One model's card, as /v1/models lists it (the path may hold / and :, as fine-tuned model names do)."""
    return _serving(request).model_card(model)


@router.post("/v1/chat/completions", response_model=None,
             responses=answers(400, 404, 413, 429, 500, 503, ok=ChatCompletionResponse, stream=ChatCompletionChunk))
@cancelled_on_disconnect
async def chat_completions(body: ChatCompletionRequest, request: Request):
    return _respond(await create_chat_completion(_serving(request), body))


@router.post("/v1/completions", response_model=None,
             responses=answers(400, 404, 413, 429, 500, 503, ok=CompletionResponse, stream=CompletionResponse))
@cancelled_on_disconnect
async def completions(body: CompletionRequest, request: Request):
    return _respond(await create_completion(_serving(request), body))


MESSAGE_EVENTS = {"type": "object", "required": ["event", "data"], "description": "Anthropic's server-sent events "
                  "when stream is true: message_start, content_block_start, content_block_delta..., "
                  "content_block_stop, message_delta, message_stop (or error).", "properties": {
                      "event": {"enum": ["message_start", "content_block_start", "content_block_delta",
                                         "content_block_stop", "message_delta", "message_stop", "error"]},
                      "data": {"type": "string", "contentMediaType": "application/json"}}}


def _message_answers() -> dict:
    out = answers(400, 404, 413, 429, 500, 503, ok=MessagesResponse)
    out[200]["content"] = {"text/event-stream": {"schema": MESSAGE_EVENTS}}
    return out


@router.post("/v1/messages", response_model=None, responses=_message_answers())
@cancelled_on_disconnect
async def messages(body: MessagesRequest, request: Request):
    """Anthropic's Messages API on the same models (serve/messages.py)."""
    return _respond(await create_message(_serving(request), body))


@router.post("/v1/messages/count_tokens", response_model=TokenCount, responses=answers(400, 404, 413, 429, 500, 503,
                                                                                     ok=TokenCount))
async def messages_count_tokens(body: CountTokensRequest, request: Request):
    """Anthropic's token count: the prompt /v1/messages would read, rendered the same way (serve/messages.py)."""
    return _respond(await count_tokens(_serving(request), body))


# -----------------------------------------------------------------------------
# Embedding, reranker and classifier models (tunesmith deploy --encoders)


@router.post("/v1/embeddings", response_model=EmbeddingResponse,
             responses=answers(400, 404, 413, 429, 500, 503, ok=EmbeddingResponse))
async def embeddings(body: EmbeddingRequest, request: Request):
    return _respond(await create_embeddings(_serving(request), body))


@router.post("/v1/rerank", response_model=RerankResponse,
             responses=answers(400, 404, 413, 429, 500, 503, ok=RerankResponse))
async def rerank(body: RerankRequest, request: Request):
    result = await create_rerank(_serving(request), body)
    return JSONResponse(result.model_dump(mode="json", exclude_none=True))  # no document with return_documents false


@router.post("/v1/score", response_model=ScoreResponse, responses=answers(400, 404, 413, 429, 500, 503, ok=ScoreResponse))
async def score(body: ScoreRequest, request: Request):
    return _respond(await create_score(_serving(request), body))


@router.post("/v1/classify", response_model=ClassificationResponse,
             responses=answers(400, 404, 413, 429, 500, 503, ok=ClassificationResponse))
async def classify(body: ClassificationRequest, request: Request):
    return _respond(await create_classification(_serving(request), body))
