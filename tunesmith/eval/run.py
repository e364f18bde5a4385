"""`tunesmith eval`: answer a dataset with each model, score the answers, compare the models side by side.

    tunesmith eval --compare base=smollm2-135m-instruct tuned=runs/prd-assistant/final --dataset prd-assistant --limit -20

Reads top to bottom: what to evaluate and on what, then each model answers every row (one model in memory at a
time), then the scores, then the table, results.json, answers.jsonl and scores.png in the output folder.
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunesmith.config.eval import CHEAP_METRICS, EvalConfig
from tunesmith.config.local_paths import with_absolute_paths
from tunesmith.errors import ConfigError
from tunesmith.eval import metrics as M
from tunesmith.eval import report
from tunesmith.eval.samples import Sample, load_samples, pick_choice
from tunesmith.eval.targets import Answer, Target, answer, check_endpoints, targets_from
from tunesmith.versions import installed_versions

log = logging.getLogger("tunesmith")
COLUMN_ORDER = ["exact_match", "bleu", "rouge1", "rouge2", "rougeL", "bertscore", "format", "accuracy", "judge",
                "judge_win", "human"]
HOW = {"exact_match": "equal after stripping and collapsing whitespace; case and punctuation count",
       "rouge": "rouge-score F-measure, Porter stemming, CJK characters as tokens",
       "format": "the reference's form kept: JSON of the same kind and keys, or its Markdown headings in order",
       "accuracy": "the choice the generated answer names (letter or text), see eval/samples.py pick_choice"}


@dataclass
class EvalResult:
    output_dir: Path
    scores: dict[str, dict[str, float]]  # model -> column -> score (0-1)
    results: Path
    answers: Path
    chart: Path | None


def evaluate(cfg: EvalConfig) -> EvalResult:
    if cfg.review_results:  # a filled human review sheet folded into the eval it came from: eval/review.py
        from tunesmith.eval.review import fold_review

        return fold_review(cfg)
    if cfg.task != "generation":  # embedding, reranker and classifier models: eval/retrieval.py
        from tunesmith.eval.retrieval import evaluate_encoders

        return evaluate_encoders(cfg)
    if not cfg.dataset:  # --benchmark alone: eval/benchmarks.py
        from tunesmith.eval.benchmarks import evaluate_benchmarks

        return evaluate_benchmarks(cfg)
    # -------------------------------------------------------------------------
    # What, on what, with which metrics: all checked before any weights load
    targets = targets_from(cfg)
    samples, skipped = load_samples(cfg.dataset, cfg.limit, cfg.skip_bad_rows, cfg.encoding)
    names = metrics_for(cfg, samples)
    M.check_available(names)
    if "bertscore" in names:  # its scoring model is there (offline) before any model answers
        from tunesmith.eval.bertscore import resolve

        resolve(cfg.bertscore_model)
    check_endpoints(targets, cfg)
    if cfg.benchmark:  # every benchmark known, its data here, code allowed: before any weights load
        from tunesmith.eval.benchmarks import check_benchmarks

        check_benchmarks(cfg, targets)
    judge = None
    if cfg.judge_url:  # LLM-as-judge: eval/judge.py
        from tunesmith.eval.judge import open_judge

        judge = open_judge(cfg, len(targets))
    out = output_dir_for(cfg)
    kinds = f"{sum(not s.is_choice for s in samples)} generation, {sum(s.is_choice for s in samples)} multiple-choice"
    log.info("eval: %d model%s on %d rows (%s%s): %s", len(targets), "" if len(targets) == 1 else "s", len(samples),
             kinds, f", {skipped} bad rows skipped" if skipped else "", ", ".join(names))
    _save_config(cfg, out, targets, len(samples), skipped)

    # -------------------------------------------------------------------------
    # Answer and score, one model at a time
    models: dict[str, Any] = {}
    info: dict[str, str] = {}
    texts: dict[str, list[str]] = {}  # model -> answer per row, for the judge and the review sheet
    (out / "answers.jsonl").write_text("", encoding="utf-8")
    for target in targets:
        start = time.time()
        answers = answer(target, samples, cfg)
        seconds = time.time() - start
        texts[target.name] = [a.text for a in answers]
        columns, per_sample, picked, how = score(names, samples, answers, cfg)
        info.update(how)
        spec = target.spec + (f"#{target.served_model}" if target.served_model else "")
        models[target.name] = {"kind": target.kind, "spec": spec, "scores": columns, "seconds": round(seconds, 2)}
        report.append_answers(out / "answers.jsonl", [_answer_row(target, s, a, per_sample[i], picked.get(i))
                                                      for i, (s, a) in enumerate(zip(samples, answers))])

    extra: dict[str, Any] = {}
    if judge is not None:
        from tunesmith.eval.judge import judge_answers

        judged = judge_answers(judge, samples, texts, out)
        for name, columns in judged.columns.items():
            models[name]["scores"].update(columns)
        extra["judge"] = judged.summary
    if cfg.review_sample:
        from tunesmith.eval.review import write_review

        write_review(samples, texts, out, cfg.review_sample, cfg.review_seed)
    benchmark_columns, benchmark_how = [], {}
    if cfg.benchmark:  # standard benchmarks beside the metrics, scored by the harness: eval/benchmarks.py
        from tunesmith.eval.benchmarks import add_benchmarks

        benchmark_columns, benchmark_how = add_benchmarks(targets, cfg, out, models)

    # -------------------------------------------------------------------------
    # Report
    present = {c for m in models.values() for c in m["scores"]}
    results = {
        "dataset": cfg.dataset, "rows": len(samples), "skipped_rows": skipped, "metrics": names,
        "columns": [c for c in COLUMN_ORDER if c in present] + benchmark_columns, "models": models,
        "generation": cfg.generation.model_dump(),
        "how": {name: info.get(name, HOW.get(name, "")) for name in names} | benchmark_how,
        "created": datetime.datetime.now().isoformat(timespec="seconds"), **extra,
    }
    report.write_results(out / "results.json", results)
    chart = report.plot_scores(out / "scores.png", results)
    report.print_table(results)
    log.info("eval: results in %s (results.json, answers.jsonl%s)", out, ", scores.png" if chart else "")
    scores = {name: m["scores"] for name, m in models.items()}
    return EvalResult(out, scores, out / "results.json", out / "answers.jsonl", chart)


def metrics_for(cfg: EvalConfig, samples: list[Sample]) -> list[str]:
    """The asked-for metrics that fit the rows: accuracy for multiple-choice rows, the others for generation rows.
    A metric asked for by name that fits no row is an error; the default set just drops it."""
    explicit = "metrics" in cfg.model_fields_set
    has_gen, has_choice = any(not s.is_choice for s in samples), any(s.is_choice for s in samples)
    chosen = []
    for name in dict.fromkeys(cfg.metrics):
        fits = has_choice if name == "accuracy" else has_gen
        if fits:
            chosen.append(name)
        elif explicit:
            need = "multiple-choice rows (choices + answer)" if name == "accuracy" else "rows with a reference answer"
            raise ConfigError(f"metrics: {name} needs {need}; {', '.join(cfg.dataset)} has none")
    if not chosen:
        raise ConfigError(f"metrics: none of {', '.join(cfg.metrics)} fits these rows; the defaults are "
                          f"{' '.join(CHEAP_METRICS)}")
    return chosen


def score(names: list[str], samples: list[Sample], answers: list[Answer], cfg: EvalConfig):
    """Corpus-level columns, per-row scores, the choice each multiple-choice answer named, and how scores were made."""
    columns: dict[str, float] = {}
    per_sample: list[dict[str, float]] = [{} for _ in samples]
    info: dict[str, str] = {}
    gen = [i for i, s in enumerate(samples) if not s.is_choice]
    for name in (n for n in names if n != "accuracy"):
        result = M.METRICS[name]([answers[i].text for i in gen], [samples[i].reference for i in gen],
                                 model=cfg.bertscore_model, idf=cfg.bertscore_idf)
        columns.update(result.columns)
        info.update(result.info)
        for j, i in enumerate(gen):
            per_sample[i].update(result.per_sample[j])
    picked: dict[int, int | None] = {}
    if "accuracy" in names:
        choice = [i for i, s in enumerate(samples) if s.is_choice]
        picked = {i: pick_choice(answers[i].text, samples[i].choices) for i in choice}
        result = M.accuracy([picked[i] for i in choice], [samples[i].answer_index for i in choice])
        columns.update(result.columns)
        for j, i in enumerate(choice):
            per_sample[i].update(result.per_sample[j])
    return columns, per_sample, picked, info


def output_dir_for(cfg: EvalConfig) -> Path:
    if cfg.output_dir is None:
        cfg.output_dir = f"runs/eval-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path = Path(cfg.output_dir)
    if (path / "results.json").exists() and not cfg.overwrite:
        raise ConfigError(f"output_dir: {path} already holds eval results; pass --overwrite or choose another "
                          "--output-dir")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _answer_row(target: Target, sample: Sample, a: Answer, scores: dict[str, float],
                picked: int | None) -> dict[str, Any]:
    row: dict[str, Any] = {"model": target.name, "source": sample.where, "messages": sample.messages,
                           "reference": sample.reference, "answer": a.text, "finish_reason": a.finish_reason,
                           "completion_tokens": a.completion_tokens, "scores": scores}
    if a.reasoning is not None:
        row["reasoning"] = a.reasoning
    if sample.is_choice:
        row |= {"choices": sample.choices, "right": sample.answer_index, "picked": picked}
    return row


def _save_config(cfg: EvalConfig, out: Path, targets: list[Target], rows: int, skipped: int) -> None:
    # relative paths written absolute: `tunesmith eval -c OUT/config.yaml` reruns it from any directory
    data = with_absolute_paths(cfg, cfg.model_dump(mode="json"), Path.cwd())
    versions = installed_versions(("tunesmith", "torch", "transformers", "peft", "sacrebleu", "rouge-score"))
    data["_resolved"] = {"targets": [{"name": t.name, "kind": t.kind, "spec": t.spec} for t in targets], "rows": rows,
                         "skipped_rows": skipped, "versions": versions, "command": cfg.command}
    (out / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
