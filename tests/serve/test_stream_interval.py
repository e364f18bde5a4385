"""deploy --stream-interval N: the transformers engine passes on a request's output with its first token, every N tokens
and at its end (infer/continuous.py, every_nth_output). The streamed answer must be the same text with the same
usage and finish, in fewer chunks; a stop string must cut it where it cuts an answer streamed token by token."""

import json

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from tiny import make_tiny_model, untie_head

from tunesmith.config import DeployConfig
from tunesmith.serve.app import build_app, engine_options

MAX_TOKENS = 24
USER = [{"role": "user", "content": "Write three lines about rivers and the towns along them."}]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """The tiny model with its head untied, so that its greedy answer is varied text (tied, it repeats newlines)."""
    from tunesmith.infer import load_engine

    model = untie_head(make_tiny_model(tmp_path_factory.mktemp("stream-interval") / "tiny-untied"))
    engine = load_engine("transformers", model=str(model), device="cpu", dtype="float32")
    with TestClient(build_app(engine, DeployConfig())) as client:  # the app closes the engine at its end
        yield client, engine


def streamed(client, interval: int, **extra) -> tuple[list[str], dict]:
    """The content pieces of one greedy streamed chat answer, and its last chunk with usage."""
    http, engine = client
    engine.loops.stream_interval = interval  # read as each request joins the batch
    body = {"messages": USER, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, **extra}
    with http.stream("POST", "/v1/chat/completions", json=body) as reply:
        assert reply.status_code == 200, reply.read()
        events = [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith("data: {")]
    pieces = [e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]]
    finish = next(e["choices"][0]["finish_reason"] for e in events if e["choices"] and e["choices"][0]["finish_reason"])
    return [p for p in pieces if p], {"finish": finish, "usage": events[-1]["usage"]}


def test_chunks_every_n_tokens_hold_the_same_answer(client):
    every, end = streamed(client, 1)
    assert end["usage"]["completion_tokens"] == MAX_TOKENS and len(every) > MAX_TOKENS // 2  # one piece per token
    chunked, chunked_end = streamed(client, 4)
    assert "".join(chunked) == "".join(every) and chunked_end == end
    assert len(chunked) <= 1 + -(-MAX_TOKENS // 4)  # the first token, then at most one chunk per 4 tokens


def test_a_stop_string_cuts_the_chunked_answer_where_it_cuts_the_token_by_token_one(client):
    text = "".join(streamed(client, 1)[0])
    stop = text[len(text) // 2: len(text) // 2 + 3]  # completed mid-way, inside a chunk of 4
    assert stop.strip() and text.index(stop) > 0
    every, end = streamed(client, 1, stop=[stop])
    chunked, chunked_end = streamed(client, 4, stop=[stop])
    assert "".join(every) == text[: text.index(stop)] and end["finish"] == "stop"
    assert "".join(chunked) == "".join(every) and chunked_end == end  # usage counts up to the stop in both


def test_deploy_hands_the_interval_to_the_transformers_engine_and_refuses_it_for_vllm():
    assert engine_options(DeployConfig(stream_interval=4)) == {"stream_interval": 4}
    assert engine_options(DeployConfig()) == {}  # every token, the engine's default
    with pytest.raises(ValidationError, match="stream_interval: .*vllm"):
        DeployConfig(backend="vllm", stream_interval=2)
