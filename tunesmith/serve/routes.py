"""The HTTP routes: each parses its body into a protocol.py schema and hands it to chat.py or completion.py."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tunesmith.serve.chat import create_chat_completion
from tunesmith.serve.completion import create_completion
from tunesmith.serve.protocol import ChatCompletionRequest, CompletionRequest, ModelList
from tunesmith.serve.serving import EventStream, Serving

router = APIRouter()


class SSEResponse(StreamingResponse):
    """Sends an EventStream and always closes it: on the last line, on error, and when the client disconnects
    (Starlette then cancels the sending task), so the generation stops and the request's slot is freed."""

    def __init__(self, stream: EventStream):
        super().__init__(stream, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.stream = stream

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.stream.aclose()


def _serving(request: Request) -> Serving:
    return request.app.state.serving


def _respond(result):
    if isinstance(result, EventStream):
        return SSEResponse(result)
    return JSONResponse(result.model_dump(mode="json"))


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/v1/models")
async def models(request: Request) -> ModelList:
    return _serving(request).models()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    return _respond(await create_chat_completion(_serving(request), body))


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    return _respond(await create_completion(_serving(request), body))
