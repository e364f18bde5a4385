"""app.py in process (Starlette's TestClient, scripted engine): every error is OpenAI-shaped JSON with the right
status, the API key and body limit hold, /metrics counts, and a good request still works after each bad one."""

import json

import pytest
from fastapi.testclient import TestClient
from scripted_engine import ScriptedEngine

from tunesmith.config import DeployConfig
from tunesmith.serve.app import build_app

KEY = {"Authorization": "Bearer sekret"}
GOOD = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture
def client():
    engine = ScriptedEngine()
    with TestClient(build_app(engine, DeployConfig(api_key="sekret", max_body_bytes=2000, max_tokens_limit=50))) as c:
        c.engine = engine
        yield c
    assert engine.closed  # the app closes its engine on shutdown


def assert_error(response, status, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize("body, param, words", [
    ({"model": "base", "max_tokens": 3}, "messages", "required"),
    ({**GOOD, "messages": "hi"}, "messages", None),
    ({**GOOD, "max_tokens": -1}, "max_tokens", "greater than or equal to 1"),
    ({**GOOD, "temperature": "hot"}, "temperature", "valid number"),
    ({**GOOD, "n": 0}, "n", None),
    ({**GOOD, "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", None),
    ({**GOOD, "colour": "blue"}, "colour", "Unrecognized request argument supplied: colour"),
    ({**GOOD, "max_tokens": 51}, "max_tokens", "more than this server allows (50)"),
    ({**GOOD, "messages": [{"role": "user", "content": None}]}, "messages[0].content", None),
    ({**GOOD, "messages": [{"role": "tool", "content": "sunny"}]}, "messages[0].tool_call_id", "required"),
])
def test_bad_requests_are_400_naming_the_parameter(client, body, param, words):
    error = assert_error(client.post("/v1/chat/completions", json=body, headers=KEY), 400, param)
    assert error["type"] == "invalid_request_error"
    assert words is None or words in error["message"]
    assert client.post("/v1/chat/completions", json=GOOD, headers=KEY).status_code == 200


def test_malformed_json_is_400(client):
    r = client.post("/v1/chat/completions", content=b'{"model": "base", "messages": [', headers={**KEY, "Content-Type": "application/json"})
    assert "not valid JSON" in assert_error(r, 400)["message"]


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain"])
def test_json_sent_without_its_content_type_is_400_naming_the_header(client, content_type):
    r = client.post("/v1/chat/completions", content=json.dumps(GOOD).encode(),  # what curl -d sends without -H
                    headers={**KEY, "Content-Type": content_type})
    message = assert_error(r, 400)["message"]
    assert "Content-Type: application/json" in message and content_type in message
    r = client.post("/v1/chat/completions", content=json.dumps(GOOD).encode(),
                    headers={**KEY, "Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200
    assert "not valid JSON" in assert_error(client.post("/v1/chat/completions", content=b"{", headers={
        **KEY, "Content-Type": "application/json"}), 400)["message"]


def test_null_for_the_fields_openai_declares_nullable_means_their_default(client):
    # clients that write every field of their request model send n, stream and echo as null when unset
    chat = client.post("/v1/chat/completions", json={**GOOD, "n": None, "stream": None}, headers=KEY)
    assert chat.status_code == 200 and len(chat.json()["choices"]) == 1  # n 1, not streamed
    completion = client.post("/v1/completions", headers=KEY, json={
        "model": "base", "prompt": "hi", "max_tokens": 3, "n": None, "stream": None, "echo": None})
    assert completion.status_code == 200 and completion.json()["choices"][0]["text"] == "Hello there!"
    assert_error(client.post("/v1/chat/completions", json={**GOOD, "n": "2"}, headers=KEY), 400, "n")


def test_openai_hints_for_its_own_caching_and_abuse_tracking_are_accepted(client):
    # the openai SDK sends them when an application sets them; they change nothing here
    hints = {"prompt_cache_key": "tenant-7", "safety_identifier": "user-hash-1"}
    reply = client.post("/v1/chat/completions", json={**GOOD, **hints}, headers=KEY)
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == \
        client.post("/v1/chat/completions", json=GOOD, headers=KEY).json()["choices"][0]["message"]["content"]
    assert_error(client.post("/v1/chat/completions", json={**GOOD, "prompt_cache_key": 7}, headers=KEY), 400,
                 "prompt_cache_key")


def test_openai_options_the_sdk_sends_are_accepted_or_refused_by_name_never_unrecognized(client):
    # each is a keyword of the openai SDK's chat.completions.create: OpenAI knows it, so "Unrecognized request
    # argument" would be wrong; the ones that change nothing here are served, the others named as not served
    served = {"modalities": ["text"], "prompt_cache_retention": "24h", "prompt_cache_options": {}}
    reply = client.post("/v1/chat/completions", json={**GOOD, **served}, headers=KEY)
    assert reply.status_code == 200, reply.text
    refused = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"},
               "functions": [{"name": "f", "parameters": {"type": "object"}}], "function_call": "auto",
               "prediction": {"type": "content", "content": "x"}, "reasoning_effort": "low", "verbosity": "low",
               "web_search_options": {}}
    for param, value in refused.items():
        error = assert_error(client.post("/v1/chat/completions", json={**GOOD, param: value}, headers=KEY), 400,
                             param)
        assert "Unrecognized" not in error["message"] and param in error["message"]
    assert client.post("/v1/chat/completions", json=GOOD, headers=KEY).status_code == 200


def test_api_key_is_required_on_v1_but_not_on_health(client):
    assert assert_error(client.post("/v1/chat/completions", json=GOOD), 401)["code"] == "invalid_api_key"
    assert_error(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    assert client.get("/health").json() == {"status": "ok"}
    assert [m["id"] for m in client.get("/v1/models", headers=KEY).json()["data"]] == ["base", "prd"]


def test_browser_pages_call_only_from_the_allowed_origins_and_their_preflight_needs_no_key():
    app = build_app(ScriptedEngine(), DeployConfig(api_key="sekret", allowed_origins=["https://app.example.com"]))
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    with TestClient(app) as c:
        allowed = c.options("/v1/chat/completions", headers={"Origin": "https://app.example.com", **preflight})
        assert allowed.status_code == 200  # the browser sends no key on a preflight: it is not a 401
        assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
        reply = c.post("/v1/chat/completions", json=GOOD, headers={"Origin": "https://app.example.com", **KEY})
        assert reply.status_code == 200 and reply.headers["access-control-allow-origin"] == "https://app.example.com"
        other = c.options("/v1/chat/completions", headers={"Origin": "https://evil.example", **preflight})
        assert "access-control-allow-origin" not in other.headers
        assert c.post("/v1/chat/completions", json=GOOD, headers={"Origin": "https://app.example.com"}).status_code == 401
    with TestClient(build_app(ScriptedEngine(), DeployConfig())) as c:  # by default no page of another site may call
        closed = c.options("/v1/chat/completions", headers={"Origin": "https://app.example.com", **preflight})
        assert "access-control-allow-origin" not in closed.headers


def test_the_key_guards_the_schema_and_docs_and_metrics_only_when_asked(client):
    for path in ("/openapi.json", "/docs", "/redoc", "/v1/nothing"):
        assert_error(client.get(path), 401)
    assert client.get("/openapi.json", headers=KEY).json()["info"]["title"] == "tunesmith"
    assert client.get("/docs", headers=KEY).status_code == 200
    assert client.get("/metrics").status_code == 200  # open by default, as vLLM leaves it
    with TestClient(build_app(ScriptedEngine(), DeployConfig(api_key="sekret", metrics_require_key=True))) as closed:
        assert_error(closed.get("/metrics"), 401)
        assert "tunesmith_requests_total" in closed.get("/metrics", headers=KEY).text
        assert closed.get("/health").json() == {"status": "ok"}


def test_text_that_is_not_unicode_is_400_naming_the_field_not_a_500(client):
    body = b'{"model": "base", "max_tokens": 3, "messages": [{"role": "user", "content": "a \\ud800 b"}]}'
    r = client.post("/v1/chat/completions", content=body, headers={**KEY, "Content-Type": "application/json"})
    assert "lone surrogate" in assert_error(r, 400, "messages[0].content")["message"]
    body = b'{"model": "base", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}], "\\ud800": 1}'
    r = client.post("/v1/chat/completions", content=body, headers={**KEY, "Content-Type": "application/json"})
    assert "lone surrogate" in assert_error(r, 400)["message"]


def test_draining_answers_503_with_retry_after_and_health_says_so(client):
    client.app.state.drain.begin()
    r = client.post("/v1/chat/completions", json=GOOD, headers=KEY)
    assert assert_error(r, 503)["code"] == "shutting_down" and r.headers["Retry-After"] == "5"
    assert r.headers["Connection"] == "close"
    health = client.get("/health")
    assert health.status_code == 503 and health.json() == {"status": "draining"}
    assert client.get("/metrics").status_code == 200  # scrapers see the drain


def test_oversized_body_is_413(client):
    big = {**GOOD, "messages": [{"role": "user", "content": "x" * 5000}]}
    assert "2000 bytes" in assert_error(client.post("/v1/chat/completions", json=big, headers=KEY), 413)["message"]
    assert client.post("/v1/chat/completions", json=GOOD, headers=KEY).status_code == 200


def test_unknown_model_and_unknown_route_are_404(client):
    assert assert_error(client.post("/v1/chat/completions", json={**GOOD, "model": "gpt-9"}, headers=KEY), 404,
                        "model")["code"] == "model_not_found"
    assert_error(client.get("/v1/nothing", headers=KEY), 404)


def test_the_openai_sdk_retrieves_a_model_by_name_and_an_unknown_one_is_404(client):
    import openai

    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="sekret", http_client=client, max_retries=0)
    assert sdk.models.retrieve("prd").id == "prd"
    assert sdk.models.retrieve("base").object == "model"
    with pytest.raises(openai.NotFoundError) as err:
        sdk.models.retrieve("gpt-9")
    assert err.value.body["code"] == "model_not_found" and "base, prd" in err.value.body["message"]
    assert_error(client.get("/v1/models/prd"), 401)  # behind the key, as /v1/models is


def test_engine_failure_is_500_json_and_the_server_keeps_serving(client):
    client.engine.fail_at = 0
    error = assert_error(client.post("/v1/chat/completions", json=GOOD, headers=KEY), 500)
    assert error["type"] == "server_error" and "scripted failure" in error["message"]
    client.engine.fail_at = None
    assert client.post("/v1/chat/completions", json=GOOD, headers=KEY).json()["choices"][0]["message"]["content"] == "Hello there!"


def test_stream_over_http_is_server_sent_events_ending_in_done(client):
    with client.stream("POST", "/v1/chat/completions", json={**GOOD, "stream": True}, headers=KEY) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_metrics_count_requests_tokens_and_latency(client):
    client.post("/v1/chat/completions", json=GOOD, headers=KEY)
    client.post("/v1/chat/completions", json=GOOD)
    text = client.get("/metrics").text
    assert 'tunesmith_requests_total{endpoint="/v1/chat/completions",status="200"} 1.0' in text
    assert 'tunesmith_requests_total{endpoint="/v1/chat/completions",status="401"} 1.0' in text
    assert 'tunesmith_generated_tokens_total{model="base"} 3.0' in text
    assert "tunesmith_time_to_first_token_seconds_count" in text and "tunesmith_request_latency_seconds_bucket" in text
    assert "tunesmith_requests_running 0.0" in text and "tunesmith_requests_waiting 0.0" in text
