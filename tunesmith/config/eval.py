"""`tunesmith eval`: generation metrics and multiple-choice accuracy for one model or several side by side; with
--task, retrieval, reranking or classification scores of embedding, reranker and classifier models.

    tunesmith eval --compare base=smollm2-135m-instruct tuned=runs/prd/final served=http://127.0.0.1:8000/v1 \\
        --dataset prd-assistant --limit -20 --metrics exact_match bleu rouge
    tunesmith eval --task retrieval --compare base=all-minilm-l6-v2 tuned=runs/emb/final --dataset beir/scifact
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from tunesmith.config.local_paths import local_path
from tunesmith.config.sections import GENERATION_SHORTCUTS, Device, Dtype, GenerationCfg, Section, changed

Metric = Literal["exact_match", "bleu", "rouge", "bertscore", "format", "accuracy"]
CHEAP_METRICS: list[str] = ["exact_match", "bleu", "rouge", "accuracy"]
# The table columns each metric gives; "rouge" in a gate means rougeL
COLUMNS = {"exact_match": ["exact_match"], "bleu": ["bleu"], "rouge": ["rouge1", "rouge2", "rougeL"],
           "bertscore": ["bertscore"], "format": ["format"], "accuracy": ["accuracy"]}
GATE = re.compile(r"^\s*([A-Za-z_0-9]+)\s*(>=|<=|==|>|<)\s*([0-9]*\.?[0-9]+)\s*$")


def parse_gate(text: str, metrics: list[str] | None = None) -> tuple[str, str, float]:
    """"rouge>=0.3" -> ("rougeL", ">=", 0.3); the column must be one that `metrics` compute."""
    match = GATE.match(text)
    if not match:
        raise ValueError(f"eval_gate: {text!r} is not METRIC>=VALUE (or >, <=, <, ==), e.g. rouge>=0.3")
    column, op, value = match.groups()
    column = "rougeL" if column == "rouge" else column
    known = {c: m for m, cols in COLUMNS.items() for c in cols}
    if column not in known:
        raise ValueError(f"eval_gate: {column} is no metric column; one of rouge (rougeL), {', '.join(known)}")
    if metrics is not None and known[column] not in metrics:
        raise ValueError(f"eval_gate: {column} comes from the {known[column]} metric; add it to --eval-metrics")
    return column, op, float(value)


class EvalConfig(Section):
    """Score models side by side on a dataset (each row's last assistant turn is the reference; rows with `choices` and
`answer` are multiple choice). Run: tunesmith eval --compare base=MODEL tuned=runs/NAME/final --dataset D"""

    # local_path(...): a relative path is written absolute in the eval's config.yaml (config/local_paths.py)
    model: str | None = Field(None, description=(
        "Model to evaluate (registry name, folder or hub id); with --adapters, the base they load on (default: the "
        "run's base). Without --model, --adapters or --compare: the embedded model."), json_schema_extra=local_path())
    adapters: str | None = Field(None, description=(
        "Evaluate this run's adapter (runs/NAME/final); base and template come from the run."),
        json_schema_extra=local_path())
    compare: list[str] = Field(default_factory=list, description=(
        "Models side by side, each NAME=SPEC (or SPEC, named after it): a model (registry name, folder, hub id), a "
        "run's final folder, or a running OpenAI-compatible endpoint http://host:port/v1 (append #MODEL to pick one "
        "it serves; default its first)."), json_schema_extra=local_path("named"))
    dataset: list[str] = Field(default_factory=list, description=(
        "Files, folders, registry names or hub ids (name#N samples N rows), in any training format."),
        json_schema_extra=local_path("dataset"))
    task: Literal["generation", "retrieval", "reranking", "classification"] = Field("generation", description=(
        "generation: answers scored against references; retrieval: embedding models rank a corpus (recall@k, MRR, "
        "nDCG@k over a BEIR folder or query/positive(/negatives) rows); reranking: rerankers order each query's "
        "candidates (the row's documents, or --retriever's top --candidates); classification: accuracy and "
        "macro-F1 over text/label rows (eval/retrieval.py)."))
    benchmark: list[str] = Field(default_factory=list, description=(
        "Standard benchmarks scored by the harness itself (eval/benchmarks.py): mmlu, cmmlu, ceval, gsm8k, arc, "
        "hellaswag, truthfulqa, humaneval, any other lm-evaluation-harness task or group, or a task YAML file in its "
        "format; beside --dataset's metrics in one table. Hub datasets come from the cache (tunesmith download ID "
        "--kind dataset)."))
    benchmark_backend: Literal["lm-eval", "evalscope"] = Field("lm-eval", description=(
        "lm-eval: lm-evaluation-harness in this venv; evalscope: EvalScope in .venv-evalscope "
        "(bash scripts/evalscope-env.sh), as a subprocess."))
    benchmark_dir: list[str] = Field(default_factory=list, description=(
        "Folders of task YAML files in the harness's format (their data_files read from the working directory)."),
        json_schema_extra=local_path())
    num_fewshot: int | None = Field(None, ge=0, description="Benchmarks: few-shot examples (default: each task's own).")
    benchmark_chat_template: bool = Field(False, description=(
        "Benchmarks: prompts as chats in each model's chat template, few-shot examples as turns (the harness's "
        "--apply_chat_template); endpoints are then called on /chat/completions. Default: raw prompts, as published "
        "base-model numbers are made."))
    allow_code_execution: bool = Field(False, description=(
        "Benchmarks that run the generated code (humaneval, mbpp): run it, in tunesmith's sandbox (a subprocess with "
        "CPU, memory and time limits, no network, a temporary directory)."))
    k: list[int] = Field(default_factory=lambda: [1, 5, 10], description=(
        "Cut-offs of recall@k and nDCG@k (retrieval, reranking); MRR is cut at the largest."))
    retriever: str | None = Field(None, description=(
        "reranking: rank the whole corpus with this embedding model first and rerank its top --candidates "
        "(default: each query's own documents)."), json_schema_extra=local_path())
    candidates: int = Field(20, ge=1, description="reranking with --retriever: documents reranked per query.")
    limit: int | None = Field(None, description=(
        "Score only the first N rows; a negative N scores the last N (default: all)."))
    metrics: list[Metric] = Field(default_factory=lambda: list(CHEAP_METRICS), description=(
        "exact_match, bleu, rouge (1/2/L), bertscore and format score answers against the reference; accuracy "
        "scores multiple-choice rows. Each applies to the rows it fits (eval/metrics.py says how each is computed)."))
    bertscore_model: str | None = Field(None, description=(
        "BERTScore's model: all-minilm-l6-v2 (shipped, offline; the default), a folder, or a hub id bert-score knows "
        "(roberta-large, bert-base-chinese, ...; from the hub cache offline)."), json_schema_extra=local_path())
    bertscore_idf: bool = Field(False, description="BERTScore weights tokens by inverse document frequency over the "
                                "references.")
    judge_url: str | None = Field(None, description=(
        "LLM-as-judge: an OpenAI-compatible endpoint (http://host:port/v1; tunesmith deploy or any provider) whose "
        "model judges the answers of the generation rows; raw judgements in judgements.jsonl."))
    judge_model: str | None = Field(None, description="The judge endpoint's model (default: the first it serves).")
    judge_mode: Literal["pairwise", "score"] | None = Field(None, description=(
        "pairwise: the first model against each other one, every pair judged in both orders (A/B swapped); the two "
        "orders disagreeing is a tie, their agreement is reported; score: each answer rated 1-10 on the rubric. "
        "Default: pairwise with two or more models, else score."))
    rubric: str | None = Field(None, description=(
        "Text file with the judging criteria, put into the judge's prompt (default: helpfulness, correctness against "
        "the reference, clarity)."), json_schema_extra=local_path())
    judge_api_key: str | None = Field(None, description="Bearer key for --judge-url (default: $OPENAI_API_KEY).")
    judge_max_tokens: int = Field(512, ge=1, description="Longest judge reply (greedy, temperature 0).")
    review_sample: int | None = Field(None, ge=1, description=(
        "Human review: N sampled generation rows into review.csv and review.html, each model's answer side by side "
        "under a letter shuffled per row (the key in review_key.json), with score (1-10) and notes columns to fill."))
    review_seed: int = Field(42, description="Seed of the review sample and of its letter shuffle.")
    review_results: str | None = Field(None, description=(
        "A filled review.csv: folds its mean score per model into that eval's results.json and table (column "
        "human, mean score / 10); nothing else runs. The eval's folder is the sheet's, or --output-dir."),
        json_schema_extra=local_path())
    generation: GenerationCfg = Field(default_factory=GenerationCfg, description="Generation settings.")
    batch_size: int = Field(32, ge=1, description=(
        "Prompts submitted together (they share the running batch), or concurrent requests to an endpoint."))
    backend: Literal["transformers", "vllm"] = Field(
        "transformers", description="Inference backend for local models: transformers, or vllm (its own venv).")
    system: str | None = Field(None, description="System prompt (default: the one each model was trained with).")
    chat_template_kwargs: dict = Field(default_factory=dict, description=(
        "Extra variables for the chat template, e.g. {enable_thinking: false} for Qwen3: over the ones each run saved; "
        "sent to endpoints as the request's chat_template_kwargs."))
    api_key: str | None = Field(None, description="Bearer key for endpoints (default: $OPENAI_API_KEY, else none).")
    output_dir: str | None = Field(None, description=(
        "Folder for results.json, answers.jsonl and scores.png (default runs/eval-<time>)."),
        json_schema_extra=local_path())
    overwrite: bool = Field(False, description="Write over the results already in output_dir.")
    skip_bad_rows: bool = Field(False, description=(
        "Skip rows that fail the data check (counted) instead of stopping."))
    encoding: str = Field("utf-8", description="Text encoding of CSV/JSON/JSONL dataset files, e.g. gbk, utf-16 (a utf-8 BOM is read).")
    dtype: Dtype = Field("auto", description="auto = bfloat16 on GPUs that support it, else float32.")
    device: Device = Field("auto", description="auto = cuda, then mps, then cpu.")
    command: ClassVar[str] = "eval"
    shortcuts: ClassVar[dict[str, str]] = GENERATION_SHORTCUTS  # --max-tokens, --temperature, ...

    @model_validator(mode="after")
    def _check(self) -> "EvalConfig":
        if self.review_results and (self.dataset or self.compare or self.model or self.adapters):
            raise ValueError("review_results: folds a filled sheet into the eval it came from; give it alone")
        if not self.dataset and not self.benchmark and not self.review_results:
            raise ValueError("dataset: give one or more datasets to evaluate on (--dataset FILE), or --benchmark")
        if self.benchmark and self.task != "generation":
            raise ValueError(f"benchmark: evaluates generative models; leave it out of --task {self.task}")
        if (self.judge_model or self.judge_mode or self.rubric) and not self.judge_url:
            raise ValueError("judge_url: --judge-model, --judge-mode and --rubric need the judge's endpoint (--judge-url "
                             "http://host:port/v1)")
        if self.task != "generation" and (self.judge_url or self.review_sample):
            raise ValueError(f"{'judge_url' if self.judge_url else 'review_sample'}: judges generated answers; task is "
                             f"{self.task}")
        if self.task != "generation" and changed(self, "metrics"):
            raise ValueError(f"metrics: task {self.task} reports its own (recall@k, MRR, nDCG@k, or accuracy and F1); "
                             "leave --metrics out")
        if any(k < 1 for k in self.k) or not self.k:
            raise ValueError(f"k: cut-offs are positive ranks (got {self.k})")
        if self.retriever and self.task != "reranking":
            raise ValueError(f"retriever: picks the candidates of --task reranking (task is {self.task})")
        if self.limit == 0:
            raise ValueError("limit: 0 scores nothing; give N > 0 (first N rows), N < 0 (last N) or leave it out")
        return self
