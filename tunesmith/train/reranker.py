"""Fine-tune a reranker (a cross-encoder: query and document read together, one relevance score).
Run: tunesmith sft --task reranker --dataset judged.jsonl [--reranker.loss bce|listnet|lambda]

sentence-transformers trains it: CrossEncoderTrainer with
- bce (default): BinaryCrossEntropyLoss on (query, document, label) pairs, pointwise, as the MS MARCO cross-encoders
  were trained; query/positive/negatives rows become one pair labelled 1 and one labelled 0 per negative, and the
  positives are weighted by the negatives-per-positive ratio (pos_weight), as sentence-transformers' examples do;
- listnet (ListNetLoss, Cao et al. 2007) or lambda (LambdaLoss, Wang et al. 2018, NDCG-aware): listwise over each
  query's documents; the list is the positive and its negatives, or every judged document of the query (graded
  labels allowed), at most reranker.max_documents.
The score head: a new linear head on an encoder; on a decoder LM the logit of "yes" minus "no" (no new weights,
Qwen3-Reranker style) unless reranker.head is score (models/encoders.py build_reranker).
"""

from __future__ import annotations

from typing import Any

from tunesmith.config import SFTConfig
from tunesmith.data.pairs import Judged, Triplet
from tunesmith.data.rows import Problem
from tunesmith.errors import DataError
from tunesmith.models import encoders
from tunesmith.models import load as models
from tunesmith.train.encoder_setup import TaskCard, before_preflight, encoder_args, encoder_rows, make_trainable
from tunesmith.train.preflight import preflight, trainable_report
from tunesmith.train.run import RunResult, open_run
from tunesmith.train.setup import run_trainer


def train_reranker(cfg: SFTConfig, callbacks: list[Any] | None = None) -> RunResult:
    encoders.need_sentence_transformers()
    from sentence_transformers import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from transformers import set_seed

    with open_run(cfg) as run:
        set_seed(cfg.seed)
        base = models.resolve(cfg.model)
        rows, val_rows, skipped = encoder_rows(cfg)
        listwise = cfg.reranker.loss != "bce"
        check_labels(rows + (val_rows or []), listwise)
        before_preflight(cfg)
        plan = preflight(cfg, base, rows=len(rows))
        model = encoders.build_reranker(base, cfg.reranker.head, plan.device, plan.dtype, cfg.max_length)
        model = make_trainable(cfg, model, "reranker")
        run.save_config(base_model_folder=str(base), train_rows=len(rows), skipped_rows=skipped, **plan.recorded(),
                        **trainable_report(cfg, model), max_seq_length=model.max_seq_length)

        build = lists if listwise else pairs
        train_ds, eval_ds = build(rows, cfg), build(val_rows, cfg) if val_rows else None
        loss = ranking_loss(cfg, model, train_ds)
        args = encoder_args(CrossEncoderTrainingArguments, cfg, run.dir, plan, eval_ds is not None)
        trainer_cls = _with_loss(CrossEncoderTrainer, loss)
        tokenizer = model.tokenizer
        trainer = run_trainer(cfg, run.dir, model, tokenizer, train_ds, eval_ds, plan.device, plan.dtype,
                              run.resume_from, callbacks, trainer_cls=trainer_cls, args=args)
        card = TaskCard("reranker", base, loss=cfg.reranker.loss, adapter=cfg.tuner != "full",
                        max_seq_length=model.max_seq_length)
        final = run.save_final(trainer, card)
        return run.result(trainer, final, skipped)


def check_labels(rows: list[Any], listwise: bool) -> None:
    """BCE learns a probability: labels in [0, 1]. Graded relevance (0-3, say) is for the listwise losses."""
    problems = [Problem(r.source, r.line, "label", f"{r.label:g} is outside [0, 1], which the bce loss needs; use "
                        "--reranker.loss lambda (or listnet) for graded labels")
                for r in rows if isinstance(r, Judged) and r.label > 1 and not listwise]
    if problems:
        from tunesmith.data.load import describe_problems

        raise DataError(describe_problems(problems))


def pairs(rows: list[Any], cfg: SFTConfig) -> Any:
    """Pointwise: columns query, document, label."""
    from datasets import Dataset

    queries, documents, labels = [], [], []
    for row in rows:
        if isinstance(row, Triplet):
            for doc, label in [(row.positive, 1.0)] + [(n, 0.0) for n in row.negatives]:
                queries.append(row.query), documents.append(doc), labels.append(label)
        else:
            queries.append(row.query), documents.append(row.document), labels.append(row.label)
    return Dataset.from_dict({"query": queries, "document": documents, "label": labels})


def lists(rows: list[Any], cfg: SFTConfig) -> Any:
    """Listwise: columns query, docs (a list), labels (a list); judged rows grouped by query, best first."""
    from datasets import Dataset

    grouped: dict[str, list[tuple[str, float]]] = {}
    for row in rows:
        if isinstance(row, Triplet):
            grouped.setdefault(row.query, []).extend([(row.positive, 1.0)] + [(n, 0.0) for n in row.negatives])
        else:
            grouped.setdefault(row.query, []).append((row.document, row.label))
    columns: dict[str, list] = {"query": [], "docs": [], "labels": []}
    for query, judged in grouped.items():
        judged = sorted(dict(judged).items(), key=lambda item: -item[1])[:cfg.reranker.max_documents]
        columns["query"].append(query)
        columns["docs"].append([d for d, _ in judged])
        columns["labels"].append([label for _, label in judged])
    return Dataset.from_dict(columns)


def ranking_loss(cfg: SFTConfig, model: Any, train_ds: Any) -> Any:
    import torch
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss, LambdaLoss, ListNetLoss

    if cfg.reranker.loss == "listnet":
        return ListNetLoss(model)
    if cfg.reranker.loss == "lambda":
        return LambdaLoss(model)
    labels = train_ds["label"]
    positives = sum(1 for x in labels if x >= 0.5)
    ratio = (len(labels) - positives) / positives if positives else 1.0
    return BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(ratio) if ratio > 1 else None)


def _with_loss(trainer_cls: Any, loss: Any) -> Any:
    import functools

    return functools.partial(trainer_cls, loss=loss)
