"""A client that leaves before its whole (not streamed) answer is ready: the server stops generating it and frees its
slot, on every generation route, instead of generating the abandoned answer to its end while the client, which
timed out, sends it again. (A client that leaves a stream: tests/serve/test_sse_response.py.)"""

import asyncio
import json

import pytest
from scripted_engine import ScriptedEngine

from tunesmith.config import DeployConfig
from tunesmith.serve.app import build_app

LONG = 2000  # tokens the scripted answer would take: ~2 s at 1 ms a token


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/completions", {"prompt": "hi"}),
    ("/v1/messages", {"messages": [{"role": "user", "content": "hi"}]}),
])
def test_a_client_that_leaves_before_its_answer_stops_the_engine_and_frees_its_slot(path, body):
    engine = ScriptedEngine([f" w{i}" for i in range(LONG)], delay=0.001)
    app = build_app(engine, DeployConfig())
    raw = json.dumps({**body, "model": "base", "max_tokens": LONG}).encode()
    sent: list[dict] = []

    async def leave() -> dict:
        while engine.open_streams == 0:  # the client leaves once the answer is being generated
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        return {"type": "http.disconnect"}

    async def run() -> None:
        async def send(message: dict) -> None:
            sent.append(message)

        await asyncio.wait_for(app(scope(path, raw), client(raw, then=leave), send), 20)

    asyncio.run(run())
    assert engine.open_streams == 0 and app.state.serving.active == 0
    metrics = app.state.serving.metrics
    generated = metrics.generated_tokens.labels("base")._value.get()
    assert 0 < generated < LONG / 2  # stopped where the client left, not at the answer's end
    assert sent[0]["status"] == 499  # counted in /metrics as the client's leaving, not as an answer
    assert metrics.requests.labels(path, "499")._value.get() == 1


def client(body: bytes, then):
    """An ASGI receive(): the request's body, then whatever `then` waits for and returns."""
    asked = False

    async def receive() -> dict:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await then()

    return receive


def scope(path: str, body: bytes) -> dict:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}


def test_a_request_cancelled_by_the_server_stops_its_generation_too():
    """uvicorn cancels the requests still running when a forced shutdown's grace period ends."""
    engine = ScriptedEngine([f" w{i}" for i in range(LONG)], delay=0.001)
    app = build_app(engine, DeployConfig())
    raw = json.dumps({"model": "base", "prompt": "hi", "max_tokens": LONG}).encode()

    async def stay() -> dict:
        await asyncio.sleep(3600)  # the client stays
        return {"type": "http.disconnect"}

    async def run() -> None:
        async def send(message: dict) -> None:
            pass

        request = asyncio.ensure_future(app(scope("/v1/completions", raw), client(raw, then=stay), send))
        while engine.open_streams == 0:
            await asyncio.sleep(0.01)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        await asyncio.sleep(0.05)  # (asyncio.run would cancel a task left behind on its way out)
        assert engine.open_streams == 0 and app.state.serving.active == 0

    asyncio.run(run())
