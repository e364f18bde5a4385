"""A streamed answer over HTTP (routes.SSEResponse): its body lines go straight to the send the Gate was given
(app.py's BODY_SEND), past the middleware that only reads a response's start. The bytes are still exactly the
stream's lines, and a client that leaves mid-stream still stops its generation and frees its slot."""

import asyncio
import json
import re

from fastapi.testclient import TestClient
from scripted_engine import ScriptedEngine

from tunesmith.config import DeployConfig
from tunesmith.serve.app import build_app
from tunesmith.serve.chat import create_chat_completion
from tunesmith.serve.protocol import ChatCompletionRequest

BODY = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "stream_options": {"include_usage": True}}
PIECES = ["Hello", ' "there"', "\n", "é😀", "\\", "!"]


def masked(text: str) -> str:
    return re.sub(r'"id":"chatcmpl-[0-9a-f]+","object":"chat.completion.chunk","created":\d+', '"id":"X","created":0',
                  text)


def test_http_stream_bytes_are_the_event_streams_lines():
    app = build_app(ScriptedEngine(PIECES), DeployConfig())
    with TestClient(app) as client, client.stream("POST", "/v1/chat/completions", json=BODY) as r:
        over_http = b"".join(r.iter_bytes()).decode()

    async def lines() -> str:
        stream = await create_chat_completion(app.state.serving, ChatCompletionRequest(**BODY))
        try:
            return "".join([line async for line in stream])
        finally:
            await stream.aclose()

    direct = asyncio.run(lines())
    assert masked(over_http) == masked(direct)
    assert over_http.endswith("data: [DONE]\n\n") and '"content":"\\\\"' in over_http


def test_a_client_that_leaves_mid_stream_stops_the_engine_and_frees_its_slot():
    engine = ScriptedEngine([f" w{i}" for i in range(2000)], delay=0.001)
    app = build_app(engine, DeployConfig())
    body = json.dumps({**BODY, "max_tokens": 2000}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    sent: list[dict] = []

    async def run() -> None:
        gone, asked = asyncio.Event(), False

        async def receive() -> dict:
            nonlocal asked
            if not asked:
                asked = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)
            if sum(m["type"] == "http.response.body" for m in sent) == 5:  # the client reads five lines and leaves
                gone.set()

        await asyncio.wait_for(app(scope, receive, send), 20)

    asyncio.run(run())
    lines = [m["body"] for m in sent if m["type"] == "http.response.body"]
    assert sent[0]["status"] == 200 and lines[0].startswith(b"data: {")
    assert len(lines) < 100  # it stopped, far before the 2,000 tokens
    assert engine.open_streams == 0 and app.state.serving.active == 0
    requests = app.state.serving.metrics.requests  # the client's leaving, as a whole answer's (README: 499)
    path = "/v1/chat/completions"
    assert requests.labels(path, "499")._value.get() == 1 and requests.labels(path, "200")._value.get() == 0


def test_a_stream_read_to_its_end_counts_as_200():
    app = build_app(ScriptedEngine(), DeployConfig())
    with TestClient(app) as http:
        assert http.post("/v1/chat/completions", json={**BODY, "stream": True}).text.endswith("data: [DONE]\n\n")
    requests = app.state.serving.metrics.requests
    assert requests.labels("/v1/chat/completions", "200")._value.get() == 1
    assert requests.labels("/v1/chat/completions", "499")._value.get() == 0
