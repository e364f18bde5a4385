"""Scoped API keys (--keys keys.yaml, serve/keys.py) in process, on the scripted engine and a clock the test moves:
401 for unknown and expired keys, 403 outside a key's models, 429 with Retry-After over its requests or tokens per
minute and served again once the minute has passed, usage per key name in /metrics, and the key never in a log."""

import datetime as dt
import hashlib
import logging

import pytest
from fastapi.testclient import TestClient
from scripted_engine import ScriptedEngine

from tunesmith.config import DeployConfig
from tunesmith.errors import ConfigError
from tunesmith.serve import keys as keys_module
from tunesmith.serve.app import build_app

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
SHA_KEY = "sk-hashed-team-b-key"


def keys_file(tmp_path):
    yesterday = (dt.date.today() - dt.timedelta(days=2)).isoformat()
    path = tmp_path / "keys.yaml"
    path.write_text(f"""keys:
  team-a:
    key: sk-team-a-0001
    models: [base]
    requests_per_minute: 3
  team-b:
    sha256: {hashlib.sha256(SHA_KEY.encode()).hexdigest()}
    tokens_per_minute: 40
  retired:
    key: sk-retired-0003
    expires: {yesterday}
""")
    return path


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(keys_module.time, "monotonic", c)
    return c


@pytest.fixture
def client(tmp_path, clock):
    with TestClient(build_app(ScriptedEngine(), DeployConfig(keys=str(keys_file(tmp_path))))) as c:
        yield c


def auth(key):
    return {"Authorization": f"Bearer {key}"}


def chat(client, key, model="base", **extra):
    return client.post("/v1/chat/completions", json={"model": model, **CHAT, **extra}, headers=auth(key))


def test_unknown_missing_and_expired_keys_are_401(client):
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 401
    assert chat(client, "sk-nobody").json()["error"]["code"] == "invalid_api_key"
    expired = chat(client, "sk-retired-0003")
    assert expired.status_code == 401 and expired.json()["error"]["code"] == "expired_api_key"
    assert client.get("/health").status_code == 200  # probes stay open


def test_a_key_calls_only_its_models_and_lists_only_them(client):
    assert chat(client, "sk-team-a-0001").status_code == 200
    denied = chat(client, "sk-team-a-0001", model="prd")
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "model_not_allowed"
    assert "team-a may not call the model `prd`" in denied.json()["error"]["message"]
    listed = client.get("/v1/models", headers=auth("sk-team-a-0001")).json()["data"]
    assert [m["id"] for m in listed] == ["base"]
    assert [m["id"] for m in client.get("/v1/models", headers=auth(SHA_KEY)).json()["data"]] == ["base", "prd"]


def test_a_model_outside_the_keys_scope_is_not_found_by_name_either(client):
    assert client.get("/v1/models/prd", headers=auth(SHA_KEY)).json()["id"] == "prd"
    hidden = client.get("/v1/models/prd", headers=auth("sk-team-a-0001"))  # as unknown as /v1/models shows it
    assert hidden.status_code == 404 and hidden.json()["error"]["message"].endswith("served models: base")


def test_requests_per_minute_gives_429_then_recovers(client, clock):
    for _ in range(3):
        assert chat(client, "sk-team-a-0001").status_code == 200
        clock.now += 10
    limited = chat(client, "sk-team-a-0001")
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert limited.headers["Retry-After"] == "30"  # the first of the three ages out 60 s after it came
    assert chat(client, SHA_KEY).status_code == 200  # another key is not limited by team-a's use
    clock.now += 30
    assert chat(client, "sk-team-a-0001").status_code == 200


def test_tokens_per_minute_counts_prompt_and_answer(client, clock):
    # the scripted engine: "hi" + a turn's 3 tokens = 4 prompt tokens, 3 answer tokens: 7 a request
    for _ in range(6):
        assert chat(client, SHA_KEY).status_code == 200
        clock.now += 1
    limited = chat(client, SHA_KEY)
    assert limited.status_code == 429 and "40 tokens per minute" in limited.json()["error"]["message"]
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    clock.now += 61
    assert chat(client, SHA_KEY).status_code == 200


def test_usage_per_key_in_metrics_and_no_key_in_logs(client, caplog):
    caplog.set_level(logging.DEBUG)
    chat(client, "sk-team-a-0001")
    chat(client, "sk-team-a-0001", model="prd")
    metrics = client.get("/metrics").text
    assert 'tunesmith_key_requests_total{key="team-a",status="200"} 1.0' in metrics
    assert 'tunesmith_key_requests_total{key="team-a",status="403"} 1.0' in metrics
    assert 'tunesmith_key_tokens_total{key="team-a"} 7.0' in metrics
    assert "sk-team-a-0001" not in metrics and "sk-team-a-0001" not in caplog.text


def test_anthropic_style_header_is_a_key_too(client):
    r = client.post("/v1/chat/completions", json={"model": "base", **CHAT}, headers={"x-api-key": "sk-team-a-0001"})
    assert r.status_code == 200


@pytest.mark.parametrize("body, words", [
    ("keys:\n  a:\n    key: short\n", "keys.a.key"),
    ("keys:\n  a:\n    key: sk-12345678\n    sha256: ab\n", "exactly one of key and sha256"),
    ("keys:\n  a:\n    key: sk-12345678\n    requests_per_minute: 0\n", "requests_per_minute"),
    ("keys:\n  a:\n    key: sk-12345678\n  b:\n    key: sk-12345678\n", "hold the same key"),
    ("keys:\n  a:\n    key: sk-12345678\n    modles: [x]\n", "modles"),
    ("a:\n  key: sk-12345678\n", "a: the keys go under a top-level `keys:` mapping"),  # the entries unnested
])
def test_a_bad_keys_file_names_the_file_line_and_field(tmp_path, body, words):
    path = tmp_path / "keys.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        build_app(ScriptedEngine(), DeployConfig(keys=str(path)))
    assert str(path) in str(err.value) and words in str(err.value)
