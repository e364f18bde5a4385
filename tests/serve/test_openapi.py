"""/openapi.json describes the API as served: what it lists is answered, what it refuses is refused, every status
and content type sent is listed. A bounded schemathesis run against a real `tunesmith deploy` (tiny random model,
with the key) checks it from outside, as a client would: no 5xx, no schema mismatch, and the generation loop alive
afterwards."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from scripted_engine import ScriptedEngine

from tunesmith.config import DeployConfig
from tunesmith.serve.app import build_app

BIN = Path(sys.executable).parent
KEY = "sekret"


def document(**cfg) -> dict:
    with TestClient(build_app(ScriptedEngine(), DeployConfig(**cfg))) as client:
        return client.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()


def test_every_status_the_server_sends_is_listed_and_streams_are_event_streams():
    doc = document(api_key=KEY, max_tokens_limit=50)
    for path in ("/v1/chat/completions", "/v1/completions"):
        responses = doc["paths"][path]["post"]["responses"]
        assert set(responses) == {"200", "400", "401", "404", "413", "429", "500", "503"}  # no FastAPI 422
        assert set(responses["200"]["content"]) == {"application/json", "text/event-stream"}
        assert "Retry-After" in responses["429"]["headers"]
        assert doc["paths"][path]["post"]["security"] == [{"bearer": []}]
    assert "security" not in doc["paths"]["/health"]["get"] and "security" not in doc["paths"]["/metrics"]["get"]
    assert "security" in document(api_key=KEY, metrics_require_key=True)["paths"]["/metrics"]["get"]
    chat = doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert chat["max_tokens"]["anyOf"][0]["maximum"] == 50  # --max-tokens-limit


def test_the_request_schemas_refuse_what_the_server_refuses():
    schemas = document()["components"]["schemas"]
    assert set(schemas["ToolMessage"]["required"]) == {"role", "content", "tool_call_id"}
    chat = schemas["ChatCompletionRequest"]["properties"]
    for name in ("presence_penalty", "frequency_penalty"):
        assert chat[name]["anyOf"][0] == {"const": 0}
    assert chat["tool_choice"]["anyOf"][0]["anyOf"][0] == {"enum": ["none", "auto", "required"]}  # + a named one
    for name in ("audio", "functions", "function_call", "prediction", "reasoning_effort", "verbosity",
                 "web_search_options"):  # OpenAI's, parsed to be refused by name (chat.py NOT_SERVED)
        assert chat[name]["type"] == "null"
    assert chat["modalities"]["anyOf"][0] == {"type": "array", "items": {"const": "text"}}
    forced_call_needs_tools = {"properties": {"tools": {"type": "array", "minItems": 1}}, "required": ["tools"]}
    assert forced_call_needs_tools in [rule.get("then") for rule in schemas["ChatCompletionRequest"]["allOf"]]
    completion = schemas["CompletionRequest"]["properties"]
    assert completion["best_of"]["anyOf"][0] == {"const": 1}
    assert {"type": "array", "minItems": 1, "items": {"type": "string"}} in completion["prompt"]["anyOf"]
    stream_options_need_stream = {"if": {"properties": {"stream_options": {"type": "object"}},
                                         "required": ["stream_options"]},
                                  "then": {"properties": {"stream": {"const": True}}, "required": ["stream"]}}
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        assert stream_options_need_stream in schemas[name]["allOf"]


# -----------------------------------------------------------------------------
# From outside: schemathesis against a running server


@pytest.fixture
def server(tiny_model, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "deploy.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen([BIN / "tunesmith", "deploy", "--model", tiny_model, "--api-key", KEY, "--port",
                                 str(port), "--device", "cpu", "--dtype", "float32", "--max-tokens-limit", "4"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while health(url) is None:
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(60)


def health(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(server, tmp_path):
    """Every phase and check, 15 fuzzed cases per operation on a fixed seed (about 900 requests, most from the
    coverage phase: boundaries, missing and wrong-typed fields), then the server still generates. A request may
    take a while (5 prompts x n=101 on two CPU cores: ~15 s), hence the response-time limit of 60 s."""
    st = shutil.which("st", path=str(BIN))
    if st is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    proc = subprocess.run([st, "run", f"{server}/openapi.json", "-H", f"Authorization: Bearer {KEY}", "--checks", "all",
                           "--max-examples", "15", "--seed", "7", "--generation-deterministic", "--workers", "1",
                           "--request-timeout", "60", "--max-response-time", "60", "--no-color"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)  # its caches go there
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    summary = [line for line in out.splitlines() if "generated" in line][-1]
    assert " passed" in summary and "fail" not in summary and "error" not in summary, summary
    assert int(summary.split()[0]) > 500  # it ran: coverage alone sends hundreds
    assert health(server) == 200
    body = json.dumps({"prompt": "still there", "max_tokens": 2}).encode()
    request = urllib.request.Request(f"{server}/v1/completions", body, {"Authorization": f"Bearer {KEY}",
                                                                         "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        assert json.load(r)["usage"]["completion_tokens"] == 2
