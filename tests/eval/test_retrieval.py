"""`tunesmith eval --task retrieval | reranking | classification` in process (eval/retrieval.py): the metrics on hand-
computed rankings, the data forms (BEIR folder, query/positive/negatives and query/document/label rows), and base vs
other models in one table on tiny random encoders (tests/tiny.py). The console script and a real gain from fine-tuning:
tests/e2e/test_encoder_tasks_cli.py."""

import json
import math

import pytest
from tiny import make_tiny_encoder

from tunesmith import api
from tunesmith.config import load
from tunesmith.config.eval import EvalConfig
from tunesmith.errors import ConfigError, DataError
from tunesmith.eval.retrieval import (
    classification_scores,
    load_retrieval_set,
    ranking_scores,
)

# -----------------------------------------------------------------------------
# Metrics on rankings worked out by hand


def test_recall_mrr_and_ndcg_of_known_rankings():
    qrels = {"q1": {"a": 2, "b": 1, "c": 0}, "q2": {"d": 1}, "q3": {"e": 0}}  # q3: nothing to find, left out
    rankings = {"q1": ["c", "a", "x", "b"], "q2": ["d", "e"], "q3": ["e"]}
    means, per_query = ranking_scores(rankings, qrels, [1, 3])
    # q1: relevant a (grade 2) and b (grade 1); a at rank 2, b at rank 4 (beyond 3); c is judged 0
    dcg3 = 2 / math.log2(3)  # c: 0 / log2(2), a: 2 / log2(3), x: 0
    ideal3 = 2 / math.log2(2) + 1 / math.log2(3)
    assert per_query["q1"] == pytest.approx({"recall@1": 0.0, "ndcg@1": 0.0, "recall@3": 0.5, "ndcg@3": dcg3 / ideal3,
                                             "mrr@3": 0.5})
    assert per_query["q2"] == pytest.approx({"recall@1": 1.0, "ndcg@1": 1.0, "recall@3": 1.0, "ndcg@3": 1.0,
                                             "mrr@3": 1.0})
    assert "q3" not in per_query
    assert means == pytest.approx({"recall@1": 0.5, "ndcg@1": 0.5, "recall@3": 0.75, "ndcg@3": (dcg3 / ideal3 + 1) / 2,
                                   "mrr@3": 0.75})
    assert round(dcg3 / ideal3, 4) == 0.4796


def test_accuracy_and_macro_f1():
    scores, right = classification_scores(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    # a: 1 true positive, 1 false positive -> F1 2/3; b: 2 true positives, 1 false negative -> F1 4/5
    assert right == [True, False, True, True]
    assert scores == pytest.approx({"accuracy": 0.75, "f1_macro": (2 / 3 + 4 / 5) / 2})


# -----------------------------------------------------------------------------
# Data


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def beir(tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    write_jsonl(folder / "corpus.jsonl", [{"_id": "d1", "title": "Flood", "text": "sandbags"},
                                          {"_id": "d2", "title": "", "text": "a cook"}, {"_id": "d3", "text": "a van"}])
    write_jsonl(folder / "queries.jsonl", [{"_id": "q1", "text": "stop the water"}, {"_id": "q2", "text": "meals"},
                                           {"_id": "q3", "text": "unjudged"}])
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td3\t1\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td3\t0\nq2\td2\t1\n")
    return folder


def test_a_beir_folder_reads_its_test_qrels_and_keeps_queries_with_something_to_find(beir):
    data = load_retrieval_set([str(beir)])
    assert data.corpus == {"d1": "Flood. sandbags", "d2": "a cook", "d3": "a van"}
    assert data.queries == {"q1": "stop the water", "q2": "meals"}
    assert data.qrels == {"q1": {"d1": 2.0, "d3": 0.0}, "q2": {"d2": 1.0}}
    assert load_retrieval_set([str(beir)], limit=-1).queries == {"q2": "meals"}


def test_rows_become_a_corpus_of_their_documents_with_each_query_judged(tmp_path):
    rows = write_jsonl(tmp_path / "rows.jsonl", [
        {"query": "first aid", "positive": "nurse", "negatives": ["chef", "driver"]},
        {"query": "cook", "positive": "chef", "negative": "nurse"},
        {"query": "cook", "document": "baker", "label": 1},
    ])
    data = load_retrieval_set([str(rows)])
    text = {i: t for i, t in data.corpus.items()}
    assert sorted(text.values()) == ["baker", "chef", "driver", "nurse"]  # each text once
    graded = {data.queries[q]: {text[d]: g for d, g in judged.items()} for q, judged in data.qrels.items()}
    assert graded == {"first aid": {"nurse": 1.0, "chef": 0.0, "driver": 0.0},
                      "cook": {"chef": 1.0, "nurse": 0.0, "baker": 1.0}}
    assert [text[d] for d in data.candidates["q1"]] == ["chef", "nurse", "baker"]  # reranking: the query's own


def test_a_row_that_is_no_retrieval_row_is_named_by_file_and_line_unless_skipped(tmp_path):
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"query": "cook", "positive": "chef"}, {"text": "hi", "label": 1}])
    with pytest.raises(DataError, match=f"{rows}:2: columns: not a reranker row"):
        load_retrieval_set([str(rows)])
    assert list(load_retrieval_set([str(rows)], skip_bad_rows=True).queries.values()) == ["cook"]


def test_retrieval_settings_are_checked_before_anything_loads():
    with pytest.raises(ConfigError, match="metrics: task retrieval reports its own"):
        load(EvalConfig, ["--task", "retrieval", "--dataset", "x", "--metrics", "bleu"])
    with pytest.raises(ConfigError, match="k: cut-offs are positive"):
        load(EvalConfig, ["--task", "retrieval", "--dataset", "x", "--k", "0"])
    with pytest.raises(ConfigError, match="retriever: picks the candidates of --task reranking"):
        load(EvalConfig, ["--task", "retrieval", "--dataset", "x", "--retriever", "all-minilm-l6-v2"])


# -----------------------------------------------------------------------------
# Models side by side (tiny random encoders: the wiring, not the quality)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    return {"emb1": make_tiny_encoder(root / "emb1", "embedding", seed=1),
            "emb2": make_tiny_encoder(root / "emb2", "embedding", seed=2),
            "rr": make_tiny_encoder(root / "rr", "reranker", seed=3),
            "clf": make_tiny_encoder(root / "clf", "classification", labels=["calm", "urgent"], seed=4)}


def test_retrieval_table_compares_models_on_the_rankings_sentence_transformers_gives(beir, encoders, tmp_path):
    import torch
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "eval"
    result = api.evaluate(load(EvalConfig, ["--task", "retrieval", "--dataset", str(beir), "--k", "1", "2", "--compare",
                                        f"base={encoders['emb1']}", f"other={encoders['emb2']}", "--output-dir",
                                        str(out), "--device", "cpu"]))
    results = json.loads((out / "results.json").read_text())
    assert results["columns"] == ["recall@1", "recall@2", "ndcg@2", "mrr@2"] and list(results["models"]) == ["base",
                                                                                                            "other"]
    assert {"config.yaml", "answers.jsonl", "scores.png"} <= {p.name for p in out.iterdir()}
    lines = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    for name in ("base", "other"):
        model = SentenceTransformer(str(encoders["emb1" if name == "base" else "emb2"]), device="cpu")
        docs = model.encode(["Flood. sandbags", "a cook", "a van"], convert_to_tensor=True)
        ranked = {}
        for line in (x for x in lines if x["model"] == name):
            sims = torch.cosine_similarity(model.encode(line["query"], convert_to_tensor=True)[None], docs)
            ranked[line["query_id"]] = [["d1", "d2", "d3"][i] for i in sims.argsort(descending=True).tolist()]
            assert line["ranked"] == ranked[line["query_id"]][:2]
        expected, _ = ranking_scores(ranked, {"q1": {"d1": 2, "d3": 0}, "q2": {"d2": 1}}, [1, 2])
        assert result.scores[name] == pytest.approx(expected)
        assert results["models"][name]["as"] == "embedding"


def test_reranking_orders_each_querys_candidates_with_the_reranker_or_the_embedder(tmp_path, encoders):
    from sentence_transformers import CrossEncoder

    candidates = {"first aid": ["nurse", "chef", "van"], "meals": ["chef", "nurse"]}  # the positive first
    rows = write_jsonl(tmp_path / "judged.jsonl", [{"query": q, "positive": docs[0], "negatives": docs[1:]}
                                                   for q, docs in candidates.items()])
    out = tmp_path / "eval"
    api.evaluate(load(EvalConfig, ["--task", "reranking", "--dataset", str(rows), "--k", "1", "3", "--compare",
                                   f"rr={encoders['rr']}", f"emb={encoders['emb1']}", "--output-dir", str(out)]))
    text = {"d0": "nurse", "d1": "chef", "d2": "van"}  # ids in the order the rows name the texts
    reranker = CrossEncoder(str(encoders["rr"]), device="cpu")
    for line in map(json.loads, (out / "answers.jsonl").read_text().splitlines()):
        if line["model"] == "rr":
            docs = candidates[line["query"]]
            scores = reranker.predict([(line["query"], d) for d in docs]).tolist()
            assert [text[d] for d in line["ranked"]] == sorted(docs, key=lambda d: -scores[docs.index(d)])
            assert line["scores"]["mrr@3"] == 1 / (1 + [text[d] for d in line["ranked"]].index(docs[0]))
    models = json.loads((out / "results.json").read_text())["models"]
    assert models["rr"]["as"] == "reranker" and models["emb"]["as"] == "embedding"


def test_classification_compares_a_classifier_with_a_base_encoder_on_a_fresh_head(tmp_path, encoders):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = ["the river is rising", "all quiet", "fire at the depot", "nothing new"]
    rows = write_jsonl(tmp_path / "labelled.jsonl", [{"text": t, "label": label} for t, label in
                                                     zip(texts, ["urgent", "calm", "urgent", "calm"])])
    out = tmp_path / "eval"
    result = api.evaluate(load(EvalConfig, ["--task", "classification", "--dataset", str(rows), "--compare",
                                        f"clf={encoders['clf']}", f"base={encoders['emb1']}-bert", "--output-dir",
                                        str(out)]))
    model = AutoModelForSequenceClassification.from_pretrained(encoders["clf"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(encoders["clf"])
    with torch.no_grad():
        predicted = [["calm", "urgent"][i] for i in model(**tokenizer(texts, padding=True, return_tensors="pt"))
                     .logits.argmax(-1).tolist()]
    expected, _ = classification_scores(predicted, ["urgent", "calm", "urgent", "calm"])
    assert result.scores["clf"] == pytest.approx(expected)
    models = json.loads((out / "results.json").read_text())["models"]
    assert models["base"]["as"] == "untrained head" and set(result.scores["base"]) == {"accuracy", "f1_macro"}
