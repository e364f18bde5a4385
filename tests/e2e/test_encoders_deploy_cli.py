"""`tunesmith deploy --encoders` through the console script: embedding, reranker and classifier models served beside
a chat model by one server, answered as sentence-transformers and transformers answer on the saved folders.

One server for the module: the tiny chat model plus three tiny random encoders (2-layer BERT, hidden 64, the shipped
MiniLM's tokenizer): `emb` (its card says it was trained with Matryoshka dimensions 64 and 32), `rr` (a CrossEncoder)
and `clf` (labels calm/urgent). The embedding test goes through the official openai SDK, which asks for base64.
"""

import math
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from e2e_cli import running
from tiny import make_tiny_encoder

DOCS = ["Ana Ruiz. Red Cross first aid certificate. Lives in Harbour.", "Ben Novak. category C truck licence.",
        "Chen Silva. trained chef; community kitchen volunteer.", "Dana Walsh. licensed electrician. Free 09:00-17:00.",
        "Eli Costa. certified interpreter (DPSI).", "Fatima Okafor. mountain rescue team member."]
QUERY = "Flood relief at the library in Riverside, 09:00-12:00: someone to treat minor injuries."


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from tunesmith.models.encoders import write_task

    root = tmp_path_factory.mktemp("encoders")
    emb = make_tiny_encoder(root / "emb", "embedding", seed=1)
    write_task(emb, {"task": "embedding", "matryoshka_dims": [64, 32]})  # what a Matryoshka run's final/ records
    return {"emb": emb, "rr": make_tiny_encoder(root / "rr", "reranker", seed=2),
            "clf": make_tiny_encoder(root / "clf", "classification", labels=["calm", "urgent"], seed=3)}


@pytest.fixture(scope="module")
def server(tiny_model, folders, tmp_path_factory):
    with running("--model", tiny_model, "--served-model-name", "chat", "--encoders",
               *[f"{name}={path}" for name, path in folders.items()], "--device", "cpu", "--dtype", "float32",
               log=tmp_path_factory.mktemp("deploy") / "deploy.log") as s:
        yield s


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


# -----------------------------------------------------------------------------
# /v1/embeddings


def test_openai_sdk_embeddings_equal_sentence_transformers_on_the_saved_folder(server, folders):
    from openai import OpenAI
    from sentence_transformers import SentenceTransformer

    client = OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    texts = [QUERY, *DOCS[:3]]
    reply = client.embeddings.create(model="emb", input=texts)  # base64 on the wire, decoded by the SDK
    expected = SentenceTransformer(str(folders["emb"]), device="cpu").encode(texts).tolist()
    assert reply.model == "emb" and [d.index for d in reply.data] == [0, 1, 2, 3]
    assert all(len(d.embedding) == 64 and cosine(d.embedding, e) > 0.9999 for d, e in zip(reply.data, expected))
    assert reply.usage.prompt_tokens == reply.usage.total_tokens > len(texts)
    floats = client.embeddings.create(model="emb", input=texts[0], encoding_format="float")
    assert cosine(floats.data[0].embedding, expected[0]) > 0.9999

    short = client.embeddings.create(model="emb", input=texts, dimensions=32)  # a Matryoshka prefix, unit length
    for d, e in zip(short.data, expected):
        norm = math.sqrt(sum(x * x for x in e[:32]))
        assert len(d.embedding) == 32 and cosine(d.embedding, [x / norm for x in e[:32]]) > 0.9999
        assert abs(sum(x * x for x in d.embedding) - 1) < 1e-4


# -----------------------------------------------------------------------------
# /v1/rerank and /v1/score


def test_rerank_orders_documents_as_the_cross_encoder_predicts(http, folders):
    from sentence_transformers import CrossEncoder

    scores = CrossEncoder(str(folders["rr"]), device="cpu").predict([(QUERY, d) for d in DOCS]).tolist()
    order = sorted(range(len(DOCS)), key=lambda i: -scores[i])
    reply = http.post("/v1/rerank", json={"model": "rr", "query": QUERY, "documents": DOCS})
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert [r["index"] for r in results] == order
    assert all(abs(r["relevance_score"] - scores[r["index"]]) < 1e-5 for r in results)
    assert all(r["document"]["text"] == DOCS[r["index"]] for r in results)

    top = http.post("/v1/rerank", json={"query": QUERY, "documents": [{"text": d} for d in DOCS], "top_n": 2,
                                        "return_documents": False}).json()  # the model left out: the reranker
    assert top["model"] == "rr" and [r["index"] for r in top["results"]] == order[:2]
    assert all("document" not in r for r in top["results"])

    pairs = http.post("/v1/score", json={"model": "rr", "text_1": QUERY, "text_2": DOCS}).json()
    assert [round(d["score"], 5) for d in pairs["data"]] == [round(s, 5) for s in scores]


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "rr", "query": QUERY, "documents": []}, 400, "documents"),
    ({"model": "rr", "query": QUERY, "documents": DOCS, "top_n": -1}, 400, "top_n"),
    ({"model": "rr", "documents": DOCS}, 400, "query"),
    ({"model": "emb", "query": QUERY, "documents": DOCS}, 404, "model"),  # an embedding model, no reranker
    ({"model": "nope", "query": QUERY, "documents": DOCS}, 404, "model"),
])
def test_bad_rerank_request_is_an_openai_style_error_and_the_server_keeps_serving(http, body, status, param):
    reply = http.post("/v1/rerank", json=body)
    assert reply.status_code == status
    error = reply.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]
    assert http.post("/v1/rerank", json={"model": "rr", "query": QUERY, "documents": DOCS[:2]}).status_code == 200


# -----------------------------------------------------------------------------
# Several models by name


def test_chat_and_encoder_models_are_served_side_by_side_by_name(server, http, folders):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["chat", "emb", "rr", "clf"]
    chat = http.post("/v1/chat/completions", json={"model": "chat", "max_tokens": 3,
                                                   "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 200 and chat.json()["model"] == "chat"
    wrong = http.post("/v1/chat/completions", json={"model": "emb", "messages": [{"role": "user", "content": "hi"}]})
    assert wrong.status_code == 404 and "is an embedding model" in wrong.json()["error"]["message"]
    assert http.post("/v1/embeddings", json={"model": "chat", "input": "hi"}).json()["error"]["code"] == "model_not_found"

    texts = ["The river is rising fast.", "All quiet at the depot."]
    reply = http.post("/v1/classify", json={"model": "clf", "input": texts}).json()
    model = AutoModelForSequenceClassification.from_pretrained(folders["clf"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(folders["clf"])
    with torch.no_grad():
        probs = torch.softmax(model(**tokenizer(texts, padding=True, return_tensors="pt")).logits, -1).tolist()
    for d, p in zip(reply["data"], probs):
        assert d["label"] == ["calm", "urgent"][p.index(max(p))] and d["num_classes"] == 2
        assert max(abs(a - b) for a, b in zip(d["probs"], p)) < 1e-5
    assert "encoders: emb (embedding), rr (reranker), clf (classification)" in server.output()


def test_eval_of_the_served_models_equals_eval_of_their_folders(server, folders, tmp_path):
    """tunesmith eval --task retrieval | reranking asks an endpoint through /v1/embeddings and /v1/rerank."""
    import json

    from tunesmith import api
    from tunesmith.config import load
    from tunesmith.config.eval import EvalConfig

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"query": q, "positive": DOCS[i], "negatives": [d for d in DOCS if d != DOCS[i]]})
                            + "\n" for i, q in enumerate(["first aid", "a truck", "hot meals"])))
    for task, name in (("retrieval", "emb"), ("reranking", "rr")):
        result = api.evaluate(load(EvalConfig, [
            "--task", task, "--dataset", str(rows), "--k", "1", "3", "--output-dir", str(tmp_path / task), "--compare",
            f"local={folders[name]}", f"served={server.url}/v1#{name}"]))
        assert result.scores["served"] == pytest.approx(result.scores["local"], abs=1e-6)
        assert set(result.scores["local"]) == {"recall@1", "recall@3", "ndcg@1", "ndcg@3", "mrr@3"}


# -----------------------------------------------------------------------------
# The volunteer matcher's pipeline against this server (embedder emb, reranker rr, the tiny chat model as policy)


def test_volunteer_pipeline_retrieves_reranks_and_lets_the_policy_assign(server, folders):
    import json

    from sentence_transformers import CrossEncoder, SentenceTransformer

    example = Path(__file__).resolve().parents[2] / "examples" / "volunteer-matcher"
    proc = subprocess.run([sys.executable, example / "pipeline.py", "--url", f"{server.url}/v1", "--embedder", "emb",
                           "--reranker", "rr", "--policy", "chat", "--incident", "heldout-003", "--top-k", "6",
                           "--keep", "2", "--max-turns", "2", "--max-tokens", "6", "--json"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    incident = next(json.loads(line) for line in (example / "incidents.jsonl").read_text().splitlines()
                    if json.loads(line)["id"] == "heldout-003")
    roster = [json.loads(line) for line in (example / "volunteers.jsonl").read_text().splitlines()]
    assert list(result["needs"]) == incident["roles"]

    # retrieval = sentence-transformers' cosine order; the shortlist = CrossEncoder.predict's best two of those
    embedder = SentenceTransformer(str(folders["emb"]), device="cpu")
    profiles = embedder.encode([v["profile"] for v in roster], normalize_embeddings=True)
    reranker = CrossEncoder(str(folders["rr"]), device="cpu")
    role = incident["roles"][0]
    need = result["needs"][role]
    similarity = profiles @ embedder.encode(incident["needs"][role], normalize_embeddings=True)
    assert need["retrieved"] == [roster[i]["id"] for i in (-similarity).argsort(kind="stable")[:6]]
    texts = {v["id"]: v["profile"] for v in roster}
    scores = reranker.predict([(incident["needs"][role], texts[i]) for i in need["retrieved"]]).tolist()
    best = sorted(need["retrieved"], key=lambda i: -scores[need["retrieved"].index(i)])[:2]
    assert [v["id"] for v in need["shortlist"]] == best

    # the episode: the shortlisted people as V1.., two policy turns scored by env.py (a random model writes no
    # assignment: each turn is the environment's "not applied" penalty)
    assert set(result["volunteers"].values()) == {v["id"] for n in result["needs"].values() for v in n["shortlist"]}
    assert len(result["turns"]) == 2 and result["complete"] is False and result["team"] == {}
    assert all(t["reward"] == -0.5 and t["observation"].startswith("Not applied") for t in result["turns"])
