"""`tunesmith eval --task retrieval | reranking | classification`: embedding, reranker and classifier models side by
side, base vs tuned (vs served), in one table, results.json, answers.jsonl and scores.png.

    tunesmith eval --task retrieval --compare base=all-minilm-l6-v2 tuned=runs/emb/final --dataset held-out.jsonl
    tunesmith eval --task reranking --retriever runs/emb/final --candidates 20 --compare rr=runs/rr/final --dataset beir/x
    tunesmith eval --task classification --compare base=all-minilm-l6-v2 tuned=runs/clf/final --dataset test.jsonl

Data: a BEIR folder (corpus.jsonl {_id, title, text}, queries.jsonl {_id, text}, qrels/test.tsv query-id corpus-id
score), or rows: query/positive(/negatives) (the positive is relevant, grade 1) or query/document/label (the label is
the grade); the corpus is every document the rows name. Classification: text/label rows.
Metrics as BEIR computes them with trec_eval, per query then averaged over the queries with a relevant document:
recall@k = relevant documents in the top k / relevant documents; MRR@k = 1 / rank of the first relevant one (0
beyond k); nDCG@k = sum of grade / log2(rank + 1) over the top k, divided by the same for the ideal order.
A model is used as what it is: an embedding model ranks by cosine similarity, a reranker by its score of each
(query, document); a model that is neither (a base encoder) classifies with a fresh, untrained head: the chance
baseline a classifier fine-tune starts from. Endpoints answer through /v1/embeddings, /v1/rerank and /v1/classify.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config.eval import EvalConfig
from tunesmith.errors import ConfigError, DataError
from tunesmith.eval import report
from tunesmith.eval.targets import Target, targets_from

log = logging.getLogger("tunesmith")
DEFAULT_ENCODER = "all-minilm-l6-v2"


@dataclass
class RetrievalSet:
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, float]]  # query id -> document id -> grade (0 = judged not relevant)
    candidates: dict[str, list[str]] = field(default_factory=dict)  # query id -> its own documents (rows)


def evaluate_encoders(cfg: EvalConfig) -> Any:
    from tunesmith.eval.run import EvalResult, _save_config, output_dir_for

    # -------------------------------------------------------------------------
    # What, on what: the rows are read and checked before any weights load
    targets = _targets(cfg)
    if cfg.task == "classification":
        rows = _classification_rows(cfg)
        columns, size, what = ["accuracy", "f1_macro"], len(rows), f"{len(rows)} labelled texts"
    else:
        data = load_retrieval_set(cfg.dataset, cfg.limit, cfg.encoding, cfg.skip_bad_rows)
        ks = sorted(set(cfg.k))
        columns = [f"recall@{k}" for k in ks] + [f"ndcg@{ks[-1]}", f"mrr@{ks[-1]}"]  # results.json: nDCG at every k
        size, what = len(data.queries), f"{len(data.queries)} queries over {len(data.corpus)} documents"
    out = output_dir_for(cfg)
    _save_config(cfg, out, targets, size, 0)
    log.info("eval (%s): %d model%s on %s", cfg.task, len(targets), "" if len(targets) == 1 else "s", what)
    (out / "answers.jsonl").write_text("", encoding="utf-8")
    first_stage = _first_stage(cfg, data) if cfg.task == "reranking" and cfg.retriever else None

    # -------------------------------------------------------------------------
    # Each model in turn (one in memory at a time)
    models: dict[str, Any] = {}
    for target in targets:
        start = time.time()
        scorer = Scorer(target, cfg)
        try:
            if cfg.task == "classification":
                predicted = scorer.classify([r.text for r in rows], sorted({r.label for r in rows}))
                scores, _ = classification_scores(predicted, [r.label for r in rows])
                lines = [{"model": target.name, "source": f"{r.source}:{r.line}", "text": r.text, "label": r.label,
                          "predicted": p} for r, p in zip(rows, predicted)]
            else:
                rankings = scorer.rank(data, first_stage)
                scores, per_query = ranking_scores(rankings, data.qrels, ks)
                lines = [{"model": target.name, "query_id": q, "query": data.queries[q], "ranked": rankings[q][:ks[-1]],
                          "relevant": sorted(d for d, g in data.qrels.get(q, {}).items() if g > 0),
                          "scores": per_query.get(q, {})} for q in data.queries]
        finally:
            scorer.close()
        spec = target.spec + (f"#{target.served_model}" if target.served_model else "")
        models[target.name] = {"kind": target.kind, "spec": spec, "as": scorer.role, "scores": scores,
                               "seconds": round(time.time() - start, 2)}
        report.append_answers(out / "answers.jsonl", lines)

    # -------------------------------------------------------------------------
    # Report: the table, results.json, answers.jsonl and scores.png
    how = {"task": HOW[cfg.task]}
    if cfg.retriever:
        how |= {"retriever": cfg.retriever, "candidates": cfg.candidates}
    results = {"task": cfg.task, "dataset": cfg.dataset, "rows": size, "columns": columns, "models": models, "how": how,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if cfg.task != "classification":
        results["corpus"] = len(data.corpus)
    report.write_results(out / "results.json", results)
    chart = report.plot_scores(out / "scores.png", results)
    report.print_table(results)
    log.info("eval: results in %s (results.json, answers.jsonl%s)", out, ", scores.png" if chart else "")
    return EvalResult(out, {n: m["scores"] for n, m in models.items()}, out / "results.json", out / "answers.jsonl",
                      chart)


HOW = {"retrieval": "each query ranks the whole corpus (embedding models: cosine similarity)",
       "reranking": "each query's candidates are ordered by the model (rerankers: their score; embedding models: "
                    "cosine similarity)",
       "classification": "the label of the highest probability; F1 is the unweighted mean over the labels"}


def _targets(cfg: EvalConfig) -> list[Target]:
    if not (cfg.model or cfg.adapters or cfg.compare):
        return [Target(DEFAULT_ENCODER, "model", DEFAULT_ENCODER)]
    return targets_from(cfg)


# -----------------------------------------------------------------------------
# Data


def load_retrieval_set(specs: list[str], limit: int | None = None, encoding: str = "utf-8",
                       skip_bad_rows: bool = False) -> RetrievalSet:
    if len(specs) == 1 and (Path(specs[0]) / "corpus.jsonl").exists():
        data = _beir(Path(specs[0]))
    else:
        data = _from_rows(specs, encoding, skip_bad_rows)
    ids = [q for q in data.queries if any(g > 0 for g in data.qrels.get(q, {}).values())]
    if not ids:
        raise DataError(f"{', '.join(specs)}: no query has a relevant document to find")
    if limit:
        ids = ids[:limit] if limit > 0 else ids[limit:]
    data.queries = {q: data.queries[q] for q in ids}
    return data


def _beir(folder: Path) -> RetrievalSet:
    """BEIR's layout; the qrels split is test (else dev, else train, else the only file)."""
    def read(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    corpus = {str(d["_id"]): (f"{d['title']}. " if d.get("title") else "") + d["text"] for d in read(folder / "corpus.jsonl")}
    queries = {str(q["_id"]): q["text"] for q in read(folder / "queries.jsonl")}
    splits = sorted((folder / "qrels").glob("*.tsv"))
    chosen = next((p for name in ("test", "dev", "train") for p in splits if p.stem == name), splits[0] if splits else None)
    if chosen is None:
        raise DataError(f"{folder}: a BEIR folder needs qrels/test.tsv (query-id, corpus-id, score)")
    qrels: dict[str, dict[str, float]] = {}
    for n, line in enumerate(chosen.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split("\t")
        if n == 1 and not parts[-1].strip().lstrip("-").replace(".", "").isdigit():
            continue  # the header
        if len(parts) < 3:
            raise DataError(f"{chosen}:{n}: expected query-id, corpus-id and score separated by tabs")
        qrels.setdefault(parts[0], {})[parts[1]] = float(parts[2])
    return RetrievalSet(corpus, queries, qrels)


def _from_rows(specs: list[str], encoding: str, skip_bad_rows: bool) -> RetrievalSet:
    from tunesmith.data.load import load_rows
    from tunesmith.data.pairs import Triplet

    data = load_rows(specs, kind="reranker", encoding=encoding)
    data.raise_if_bad(skip_bad_rows)
    doc_ids: dict[str, str] = {}
    query_ids: dict[str, str] = {}
    out = RetrievalSet({}, {}, {})

    def doc(text: str) -> str:
        if text not in doc_ids:
            doc_ids[text] = f"d{len(doc_ids)}"
            out.corpus[doc_ids[text]] = text
        return doc_ids[text]

    for row in data.rows:
        if row.query not in query_ids:
            query_ids[row.query] = f"q{len(query_ids)}"
            out.queries[query_ids[row.query]] = row.query
        q = query_ids[row.query]
        judged = [(row.positive, 1.0)] + [(n, 0.0) for n in row.negatives] if isinstance(row, Triplet) else \
            [(row.document, row.label)]
        for text, grade in judged:
            d = doc(text)
            out.qrels.setdefault(q, {})[d] = max(grade, out.qrels.get(q, {}).get(d, 0.0))
            if d not in out.candidates.setdefault(q, []):
                out.candidates[q].append(d)
    return out


def _classification_rows(cfg: EvalConfig) -> list[Any]:
    from tunesmith.data.load import load_rows

    data = load_rows(cfg.dataset, kind="classification", encoding=cfg.encoding)
    data.raise_if_bad(cfg.skip_bad_rows)
    rows = data.rows
    if cfg.limit:
        rows = rows[:cfg.limit] if cfg.limit > 0 else rows[cfg.limit:]
    return rows


# -----------------------------------------------------------------------------
# Metrics


def ranking_scores(rankings: dict[str, list[str]], qrels: dict[str, dict[str, float]],
                   ks: list[int]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean recall@k, nDCG@k and MRR@max(k) over the queries that have a relevant document, and each query's."""
    per_query: dict[str, dict[str, float]] = {}
    for q, ranked in rankings.items():
        grades = qrels.get(q, {})
        relevant = {d for d, g in grades.items() if g > 0}
        if not relevant:
            continue
        row: dict[str, float] = {}
        for k in ks:
            top = ranked[:k]
            row[f"recall@{k}"] = len(relevant & set(top)) / len(relevant)
            dcg = sum(grades.get(d, 0.0) / math.log2(i + 2) for i, d in enumerate(top))
            ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted((g for g in grades.values() if g > 0),
                                                                           reverse=True)[:k]))
            row[f"ndcg@{k}"] = dcg / ideal if ideal else 0.0
        first = next((i for i, d in enumerate(ranked[:ks[-1]]) if d in relevant), None)
        row[f"mrr@{ks[-1]}"] = 0.0 if first is None else 1.0 / (first + 1)
        per_query[q] = row
    names = list(next(iter(per_query.values())).keys()) if per_query else []
    means = {n: sum(r[n] for r in per_query.values()) / len(per_query) for n in names}
    return means, per_query


def classification_scores(predicted: list[str], gold: list[str]) -> tuple[dict[str, float], list[bool]]:
    """Accuracy and macro-F1 (the unweighted mean of each label's F1, over the labels in either list)."""
    right = [p == g for p, g in zip(predicted, gold)]
    f1s = []
    for label in sorted(set(gold) | set(predicted)):
        tp = sum(1 for p, g in zip(predicted, gold) if p == g == label)
        fp = sum(1 for p, g in zip(predicted, gold) if p == label != g)
        fn = sum(1 for p, g in zip(predicted, gold) if g == label != p)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"accuracy": sum(right) / len(right), "f1_macro": sum(f1s) / len(f1s)}, right


# -----------------------------------------------------------------------------
# Models: local (infer/encoders.py) or an endpoint


class Scorer:
    """One target as an embedder, a reranker or a classifier (role), whichever it is."""

    def __init__(self, target: Target, cfg: EvalConfig):
        self.target, self.cfg = target, cfg
        self.model: Any = None
        self.role = "endpoint"
        if target.kind != "endpoint":
            from tunesmith.infer.encoders import load_encoder
            from tunesmith.models import encoders as encoder_models
            from tunesmith.models.load import pick_device, pick_dtype

            device = pick_device(cfg.device)
            self.device, self.dtype = device, pick_dtype(cfg.dtype, device)
            self.folder = encoder_models.resolve_encoder(target.spec)
            task = encoder_models.detect_or_none(self.folder)
            if task is None and cfg.task != "classification":  # a base encoder classifies with a fresh head only
                raise ConfigError(f"compare: {target.spec} is not an embedding or reranker model")
            if task is not None:
                self.model = load_encoder(target.name, str(self.folder), device, self.dtype)
                self.role = self.model.task

    # -- ranking ---------------------------------------------------------------

    def rank(self, data: RetrievalSet, first_stage: dict[str, list[str]] | None) -> dict[str, list[str]]:
        """Document ids of each query, best first: the whole corpus (retrieval) or its candidates (reranking)."""
        if self.cfg.task == "retrieval" and (self.target.kind == "endpoint" or self.role == "embedding"):
            return self._rank_corpus(data)
        candidates = {q: list(data.corpus) if self.cfg.task == "retrieval"  # a reranker: every pair scored
                      else first_stage[q] if first_stage else data.candidates.get(q) or list(data.corpus)
                      for q in data.queries}
        if self.role == "embedding":  # a bi-encoder's order of the candidates: each text embedded once
            return self._rank_candidates(data, candidates)
        out: dict[str, list[str]] = {}
        for q, ids in candidates.items():
            scores = self.score(data.queries[q], [data.corpus[d] for d in ids])
            out[q] = [d for _, d in sorted(zip(scores, ids), key=lambda item: -item[0])]
        return out

    def _rank_candidates(self, data: RetrievalSet, candidates: dict[str, list[str]]) -> dict[str, list[str]]:
        import torch

        ids = list(dict.fromkeys(d for docs in candidates.values() for d in docs))
        docs = dict(zip(ids, torch.nn.functional.normalize(torch.tensor(self.embed([data.corpus[d] for d in ids])),
                                                           dim=-1)))
        queries = torch.nn.functional.normalize(torch.tensor(self.embed(list(data.queries.values()))), dim=-1)
        out: dict[str, list[str]] = {}
        for (q, ids), query in zip(candidates.items(), queries):
            scores = (torch.stack([docs[d] for d in ids]) @ query).tolist()
            out[q] = [d for _, d in sorted(zip(scores, ids), key=lambda item: -item[0])]
        return out

    def _rank_corpus(self, data: RetrievalSet) -> dict[str, list[str]]:
        import torch

        ids = list(data.corpus)
        docs = torch.tensor(self.embed([data.corpus[d] for d in ids]))
        queries = torch.tensor(self.embed(list(data.queries.values())))
        sims = torch.nn.functional.normalize(queries, dim=-1) @ torch.nn.functional.normalize(docs, dim=-1).T
        top = min(len(ids), max(max(self.cfg.k), self.cfg.candidates))
        order = sims.topk(top, dim=1).indices.tolist()
        return {q: [ids[i] for i in row] for q, row in zip(data.queries, order)}

    def embed(self, texts: list[str]) -> list[list[float]]:
        if self.target.kind == "endpoint":
            vectors: list[list[float]] = []
            for start in range(0, len(texts), 256):
                body = {"input": texts[start:start + 256], **self._model_field()}
                vectors += [d["embedding"] for d in _post(self.target, "/embeddings", body, self.cfg)["data"]]
            return vectors
        if self.role != "embedding":
            raise ConfigError(f"compare: {self.target.name} is a {self.role} model; retrieval ranks with embedding "
                              "models (rerankers: --task reranking)")
        return self.model.embed(texts)[0]

    def score(self, query: str, documents: list[str]) -> list[float]:
        if self.target.kind == "endpoint":
            body = {"query": query, "documents": documents, "return_documents": False, **self._model_field()}
            results = _post(self.target, "/rerank", body, self.cfg)["results"]
            scores = [0.0] * len(documents)
            for r in results:
                scores[r["index"]] = r["relevance_score"]
            return scores
        if self.role == "reranker":
            return self.model.score(query, documents)[0]
        raise ConfigError(f"compare: {self.target.name} is a {self.role} model; it cannot rank documents")

    # -- classification --------------------------------------------------------

    def classify(self, texts: list[str], labels: list[str]) -> list[str]:
        if self.target.kind == "endpoint":
            body = {"input": texts, **self._model_field()}
            return [d["label"] for d in _post(self.target, "/classify", body, self.cfg)["data"]]
        if self.role != "classification":  # a base encoder: a fresh head, the chance a fine-tune starts from
            from transformers import set_seed

            from tunesmith.infer.encoders import EncoderModel
            from tunesmith.models.encoders import build_classifier

            set_seed(0)
            model, tokenizer = build_classifier(Path(self.folder), labels, self.device, self.dtype)
            self.model = EncoderModel(self.target.name, "classification", str(self.folder), model.eval(), tokenizer,
                                      labels=labels, max_tokens=min(tokenizer.model_max_length, 512))
            self.role = "untrained head"
        return [label for label, _ in self.model.classify(texts)[0]]

    def _model_field(self) -> dict[str, str]:
        return {"model": self.target.served_model} if self.target.served_model else {}

    def close(self) -> None:
        import gc

        self.model = None
        gc.collect()


def _first_stage(cfg: EvalConfig, data: RetrievalSet) -> dict[str, list[str]]:
    """--retriever's top --candidates per query: what the rerankers then order."""
    from tunesmith.eval.targets import parse_spec

    retriever = Scorer(parse_spec(cfg.retriever, "retriever"), cfg.model_copy(update={"task": "retrieval"}))
    try:
        ranked = retriever._rank_corpus(data)
    finally:
        retriever.close()
    return {q: ids[:cfg.candidates] for q, ids in ranked.items()}


def _post(target: Target, path: str, body: dict, cfg: EvalConfig) -> dict:
    import os
    import urllib.error
    import urllib.request

    key = cfg.api_key or os.environ.get("OPENAI_API_KEY")
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(target.spec + path, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=600) as reply:
            return json.load(reply)
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:300]
        raise ConfigError(f"compare: {target.spec}{path} answered {err.code}: {detail}") from None
    except OSError as err:
        raise ConfigError(f"compare: {target.spec} cannot be reached ({err})") from None
