"""Fine-tune an embedding model (a bi-encoder) on query/positive(/negatives) rows.
Run: tunesmith sft --task embedding --dataset pairs.jsonl [--embedding.matryoshka-dims 384 128 64]

sentence-transformers trains it: SentenceTransformerTrainer with MultipleNegativesRankingLoss (InfoNCE; van den Oord
et al. 2018, Henderson et al. 2017): for each query its positive must outscore every other positive in the batch and
the row's hard negatives, so a larger batch_size means more negatives. MatryoshkaLoss (Kusupati et al. 2022) wraps it
when embedding.matryoshka_dims is set. Batches never hold the same text twice (a duplicate would be a false negative).
Rows with different numbers of hard negatives train as separate datasets (each batch from one of them), since a batch
needs the same columns in every row.
Departs from sentence-transformers' defaults: LoRA by default (tuner), as every tunesmith training command.
"""

from __future__ import annotations

from typing import Any

from tunesmith.config import SFTConfig
from tunesmith.models import encoders
from tunesmith.models import load as models
from tunesmith.train.encoder_setup import TaskCard, before_preflight, encoder_args, encoder_rows, make_trainable
from tunesmith.train.preflight import preflight, trainable_report
from tunesmith.train.run import RunResult, open_run
from tunesmith.train.setup import run_trainer

MAX_NEGATIVES = 15  # more per row only add compute: MNRL already has batch_size - 1 in-batch negatives


def train_embedding(cfg: SFTConfig, callbacks: list[Any] | None = None) -> RunResult:
    encoders.need_sentence_transformers()
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from transformers import set_seed

    with open_run(cfg) as run:
        set_seed(cfg.seed)
        base = models.resolve(cfg.model)
        rows, val_rows, skipped = encoder_rows(cfg)  # a bad row stops the run before any weights load
        before_preflight(cfg)
        plan = preflight(cfg, base, rows=len(rows))
        model = encoders.build_embedder(base, cfg.embedding.pooling, cfg.embedding.normalize, plan.device, plan.dtype,
                                        cfg.max_length)
        model = make_trainable(cfg, model, "embedding")
        run.save_config(base_model_folder=str(base), train_rows=len(rows), skipped_rows=skipped, **plan.recorded(),
                        **trainable_report(cfg, model), embedding_dim=model.get_embedding_dimension(),
                        max_seq_length=model.max_seq_length)

        train_ds, eval_ds = datasets(rows), datasets(val_rows) if val_rows else None
        loss = contrastive_loss(cfg, model)
        args = encoder_args(SentenceTransformerTrainingArguments, cfg, run.dir, plan, eval_ds is not None,
                            batch_sampler="no_duplicates", multi_dataset_batch_sampler="proportional")
        trainer_cls = _with_loss(SentenceTransformerTrainer, loss, train_ds, eval_ds)
        trainer = run_trainer(cfg, run.dir, model, model.tokenizer, train_ds, eval_ds, plan.device, plan.dtype,
                              run.resume_from, callbacks, trainer_cls=trainer_cls, args=args)
        card = TaskCard("embedding", base, embedding_dim=model.get_embedding_dimension(),
                        matryoshka_dims=cfg.embedding.matryoshka_dims, adapter=cfg.tuner != "full",
                        max_seq_length=model.max_seq_length)
        final = run.save_final(trainer, card)
        return run.result(trainer, final, skipped)


def contrastive_loss(cfg: SFTConfig, model: Any) -> Any:
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss

    loss = MultipleNegativesRankingLoss(model, scale=cfg.embedding.scale)
    dims = [d for d in cfg.embedding.matryoshka_dims if d <= model.get_embedding_dimension()]
    return MatryoshkaLoss(model, loss, matryoshka_dims=dims) if dims else loss


def datasets(rows: list[Any]) -> Any:
    """Columns anchor, positive, negative_1..N, one dataset per number of hard negatives (a dict when several)."""
    from datasets import Dataset

    groups: dict[int, list[Any]] = {}
    for row in rows:
        groups.setdefault(min(len(row.negatives), MAX_NEGATIVES), []).append(row)
    out = {}
    for count, group in sorted(groups.items()):
        columns = {"anchor": [r.query for r in group], "positive": [r.positive for r in group]}
        for i in range(count):
            columns[f"negative_{i + 1}"] = [r.negatives[i] for r in group]
        out[f"negatives_{count}"] = Dataset.from_dict(columns)
    return next(iter(out.values())) if len(out) == 1 else out


def _with_loss(trainer_cls: Any, loss: Any, *parts: Any) -> Any:
    """The trainer class run_trainer builds, with the loss (the same one under each name when the rows come in
    several datasets)."""
    import functools

    names = {name for part in parts if isinstance(part, dict) for name in part}
    losses = {name: loss for name in names} if names else loss
    return functools.partial(trainer_cls, loss=losses)
