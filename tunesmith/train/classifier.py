"""Fine-tune a sequence classifier on text/label rows (+ text_pair for pair classification).
Run: tunesmith sft --task classification --dataset labelled.jsonl [--classification.labels neg pos]

transformers trains it: AutoModelForSequenceClassification (a linear head on the [CLS] token of an encoder, or on the
last token of a decoder LM) with cross-entropy, under transformers' Trainer. The label names become the model's
id2label, which `tunesmith deploy` answers with (/v1/classify). With tuner lora the head trains whole beside the
adapters (peft's SEQ_CLS task keeps it in modules_to_save).
"""

from __future__ import annotations

from typing import Any

from tunesmith.config import SFTConfig
from tunesmith.data.load import describe_problems
from tunesmith.data.rows import Problem
from tunesmith.errors import DataError
from tunesmith.models import encoders
from tunesmith.models import load as models
from tunesmith.train.encoder_setup import TaskCard, before_preflight, encoder_args, encoder_rows, make_trainable
from tunesmith.train.preflight import preflight, trainable_report
from tunesmith.train.run import RunResult, open_run
from tunesmith.train.setup import run_trainer


def train_classifier(cfg: SFTConfig, callbacks: list[Any] | None = None) -> RunResult:
    from transformers import Trainer, TrainingArguments, set_seed

    with open_run(cfg) as run:
        set_seed(cfg.seed)
        base = models.resolve(cfg.model)
        rows, val_rows, skipped = encoder_rows(cfg)
        labels = label_names(cfg, rows + (val_rows or []))
        before_preflight(cfg)
        plan = preflight(cfg, base, rows=len(rows))
        model, tokenizer = encoders.build_classifier(base, labels, plan.device, plan.dtype)
        model = make_trainable(cfg, model, "classification")
        run.save_config(base_model_folder=str(base), train_rows=len(rows), skipped_rows=skipped, labels=labels,
                        **plan.recorded(), **trainable_report(cfg, model))

        max_length = min(cfg.max_length, tokenizer.model_max_length)
        train_ds = tokenized(rows, labels, tokenizer, max_length)
        eval_ds = tokenized(val_rows, labels, tokenizer, max_length) if val_rows else None
        args = encoder_args(TrainingArguments, cfg, run.dir, plan, eval_ds is not None)
        trainer = run_trainer(cfg, run.dir, model, tokenizer, train_ds, eval_ds, plan.device, plan.dtype,
                              run.resume_from, callbacks, trainer_cls=Trainer, args=args)
        card = TaskCard("classification", base, labels=labels, adapter=cfg.tuner != "full", max_length=max_length)
        final = run.save_final(trainer, card)
        return run.result(trainer, final, skipped)


def label_names(cfg: SFTConfig, rows: list[Any]) -> list[str]:
    """classification.labels, else the labels of the rows: integers in numeric order, names alphabetically. A row
    whose label is not in a given list is a problem."""
    given = cfg.classification.labels
    if given:
        problems = [Problem(r.source, r.line, "label", f"{r.label!r} is not one of classification.labels "
                            f"({', '.join(given)})") for r in rows if r.label not in given]
        if problems:
            raise DataError(describe_problems(problems))
        return list(given)
    found = {r.label for r in rows}
    names = sorted(found, key=int) if all(x.lstrip("-").isdigit() for x in found) else sorted(found)
    if len(names) < 2:
        raise DataError(f"{', '.join(cfg.dataset)}: every row has the label {names[0]!r}; a classifier needs at least "
                        "two classes")
    return names


def tokenized(rows: list[Any], labels: list[str], tokenizer: Any, max_length: int) -> Any:
    from datasets import Dataset

    index = {name: i for i, name in enumerate(labels)}
    texts = [r.text for r in rows]
    pairs = [r.text_pair for r in rows] if any(r.text_pair is not None for r in rows) else None
    if pairs is not None:
        pairs = [p or "" for p in pairs]
    encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    return Dataset.from_dict({**encoded, "labels": [index[r.label] for r in rows]})
