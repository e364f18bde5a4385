"""The encoder routes in process (TestClient): a deploy of encoders only (no chat model), and what each route refuses.

Tiny random encoders (tests/tiny.py); what they answer is checked against sentence-transformers over HTTP in
tests/e2e/test_encoders_deploy_cli.py, here the rules around it: Matryoshka dimensions, /v1/score pairs, a scoped key,
names that clash, /openapi.json and /metrics.
"""

import math

import pytest
from fastapi.testclient import TestClient
from tiny import make_tiny_encoder

from tunesmith.config import DeployConfig
from tunesmith.errors import ConfigError
from tunesmith.infer.encoders import NoChatEngine, load_encoders
from tunesmith.serve.app import build_app

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    folders = {"emb": make_tiny_encoder(root / "emb", "embedding", seed=1),
               "rr": make_tiny_encoder(root / "rr", "reranker", seed=2)}
    return load_encoders({name: str(path) for name, path in folders.items()}, "cpu", "float32")


@pytest.fixture(scope="module")
def client(pool, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.yaml"
    keys.write_text("keys:\n  ranker:\n    key: sk-ranker-0001\n    models: [rr]\n")
    with TestClient(build_app(NoChatEngine(), DeployConfig(encoders=["x"], keys=str(keys)), encoders=pool)) as c:
        c.headers["Authorization"] = "Bearer sk-ranker-0001"
        yield c


@pytest.fixture(scope="module")
def open_client(pool):
    with TestClient(build_app(NoChatEngine(), DeployConfig(encoders=["x"]), encoders=pool)) as c:
        yield c


def error(reply, status):
    assert reply.status_code == status, reply.text
    return reply.json()["error"]


def test_an_encoders_only_server_lists_them_and_answers_chat_with_404_naming_them(open_client):
    assert [m["id"] for m in open_client.get("/v1/models").json()["data"]] == ["emb", "rr"]
    assert open_client.get("/health").json() == {"status": "ok"}
    for path in ("/v1/chat/completions", "/v1/completions"):
        body = CHAT if "chat" in path else {"prompt": "hi"}
        assert "no chat model; it serves emb (an embedding model), rr (a reranker)" in \
            error(open_client.post(path, json=body), 404)["message"]
    assert "needs a classifier" in error(open_client.post("/v1/classify", json={"input": "hi"}), 404)["message"]


def test_dimensions_beyond_the_model_or_without_matryoshka_training_are_refused(open_client):
    full = open_client.post("/v1/embeddings", json={"input": ["a", "b"], "dimensions": 64}).json()  # its own size
    assert [len(d["embedding"]) for d in full["data"]] == [64, 64] and full["model"] == "emb"
    assert error(open_client.post("/v1/embeddings", json={"input": "a", "dimensions": 65}), 400)["param"] == "dimensions"
    refused = error(open_client.post("/v1/embeddings", json={"input": "a", "dimensions": 32}), 400)
    assert refused["code"] == "model_not_supported" and "Matryoshka" in refused["message"]
    assert error(open_client.post("/v1/embeddings", json={"input": []}), 400)["param"] == "input"
    assert error(open_client.post("/v1/embeddings", json={"input": [1, 2]}), 400)["param"].startswith("input")
    dims = open_client.get("/openapi.json").json()["components"]["schemas"]["EmbeddingRequest"]["properties"]
    assert dims["dimensions"]["anyOf"] == [{"type": "integer", "enum": [64]}, {"type": "null"}]  # its own size only
    assert dims["model"]["anyOf"][0] == {"enum": ["emb"]}
    assert "/v1/classify" not in open_client.get("/openapi.json").json()["paths"]  # no classifier here


def test_a_text_longer_than_the_model_reads_is_refused_naming_it(open_client, pool):
    limit = pool["emb"].max_tokens
    long = " ".join(["word"] * (limit + 10))
    refused = error(open_client.post("/v1/embeddings", json={"input": ["short", long]}), 400)
    assert refused["param"] == "input[1]" and refused["code"] == "context_length_exceeded"
    assert f"maximum context length is {limit} tokens" in refused["message"]
    assert error(open_client.post("/v1/embeddings", json={"input": long}), 400)["param"] == "input"
    fits = " ".join(["word"] * (limit // 2))
    assert open_client.post("/v1/embeddings", json={"input": fits}).status_code == 200


def test_score_pairs_one_text_with_many_and_an_embedding_model_answers_cosine(open_client, pool):
    one = open_client.post("/v1/score", json={"text_1": "q", "text_2": ["a", "b", "c"]}).json()
    assert one["model"] == "rr" and len(one["data"]) == 3  # a reranker first
    assert [d["score"] for d in one["data"]] == pytest.approx(pool["rr"].score("q", ["a", "b", "c"])[0], abs=1e-6)
    pairs = open_client.post("/v1/score", json={"model": "emb", "text_1": ["q", "r"], "text_2": ["a", "b"]}).json()
    a, b = pool["emb"].embed(["q", "a"])[0]
    cos = sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    assert pairs["data"][0]["score"] == pytest.approx(cos, abs=1e-5)
    assert error(open_client.post("/v1/score", json={"text_1": ["q", "r"], "text_2": ["a", "b", "c"]}),
                 400)["param"] == "text_1"


def test_a_scoped_key_reaches_only_its_models_and_encoder_tokens_are_counted(client):
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["rr"]
    assert error(client.post("/v1/embeddings", json={"model": "emb", "input": "a"}), 403)["code"] == "model_not_allowed"
    reply = client.post("/v1/rerank", json={"query": "q", "documents": ["a", "b"]}).json()
    assert reply["usage"]["total_tokens"] == 2 * len(["[CLS]", "q", "[SEP]", "a", "[SEP]"])
    metrics = client.get("/metrics").text
    assert 'tunesmith_prompt_tokens_total{model="rr"} 10.0' in metrics


def test_an_encoder_named_as_the_chat_model_is_refused_at_start(pool):
    from scripted_engine import ScriptedEngine

    with pytest.raises(ConfigError, match="encoders: base also names a chat model"):
        build_app(ScriptedEngine(), DeployConfig(), encoders={"base": pool["emb"]})
