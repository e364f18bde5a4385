"""Embedding, reranker and classifier models behind one small interface, for `tunesmith deploy` and `tunesmith eval`.

    pool = load_encoders({"embed": "runs/emb/final", "rerank": "runs/rr/final"}, device="cpu")
    vectors, tokens = pool["embed"].embed(["a text", "another"], dimensions=128)
    scores, tokens = pool["rerank"].score("a query", ["doc one", "doc two"])
    labels, tokens = pool["clf"].classify(["a text"])            # [(label, [p0, p1, ...])]

Each model runs one batch at a time (a lock: sentence-transformers' encode is not made for concurrent calls on one
model); the server calls these from a worker thread. Scores are what sentence-transformers' own predict returns
(the CrossEncoder's activation, a sigmoid for one label), so a served ranking equals `CrossEncoder.predict`'s.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from tunesmith.infer.types import Engine, GenerationRequest, UnknownModelError
from tunesmith.models import encoders as encoder_models

log = logging.getLogger("tunesmith")
BATCH = 32


@dataclass
class EncoderModel:
    """One loaded model and what it can answer (task: embedding, reranker or classification)."""

    name: str
    task: str
    folder: str
    model: Any
    tokenizer: Any
    dimensions: int | None = None  # embedding size
    matryoshka_dims: list[int] = field(default_factory=list)
    normalize: bool = True
    labels: list[str] = field(default_factory=list)
    max_tokens: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    # -------------------------------------------------------------------------
    # Embeddings

    def embed(self, texts: list[str], dimensions: int | None = None) -> tuple[list[list[float]], int]:
        """Vectors of the texts (cut to `dimensions` and re-normalised when the model normalises, as Matryoshka
        models are used), and the tokens read."""
        import torch

        with self.lock, torch.inference_mode():
            vectors = self.model.encode(texts, batch_size=BATCH, convert_to_tensor=True, show_progress_bar=False)
        vectors = vectors.float()
        if dimensions is not None and dimensions < vectors.shape[1]:
            vectors = vectors[:, :dimensions]
            if self.normalize:
                vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return vectors.cpu().tolist(), self.count_tokens(texts)

    def similarity(self, first: list[str], second: list[str]) -> tuple[list[float], int]:
        """Cosine similarity of each pair (first[i], second[i]): how an embedding model answers /v1/score."""
        import torch

        with self.lock, torch.inference_mode():
            a = self.model.encode(first, batch_size=BATCH, convert_to_tensor=True, show_progress_bar=False).float()
            b = self.model.encode(second, batch_size=BATCH, convert_to_tensor=True, show_progress_bar=False).float()
        scores = torch.nn.functional.cosine_similarity(a, b, dim=-1)
        return scores.cpu().tolist(), self.count_tokens(first) + self.count_tokens(second)

    # -------------------------------------------------------------------------
    # Reranking and scoring pairs

    def score(self, query: str, documents: list[str]) -> tuple[list[float], int]:
        return self.score_pairs([(query, d) for d in documents])

    def score_pairs(self, pairs: list[tuple[str, str]]) -> tuple[list[float], int]:
        with self.lock:
            scores = self.model.predict(pairs, batch_size=BATCH, show_progress_bar=False, convert_to_numpy=True)
        return [float(s) for s in scores], sum(self.count_tokens([q], [d]) for q, d in pairs)

    # -------------------------------------------------------------------------
    # Classification

    def classify(self, texts: list[str]) -> tuple[list[tuple[str, list[float]]], int]:
        import torch

        out: list[tuple[str, list[float]]] = []
        with self.lock, torch.inference_mode():
            for start in range(0, len(texts), BATCH):
                batch = self.tokenizer(texts[start:start + BATCH], padding=True, truncation=True,
                                       max_length=self.max_tokens, return_tensors="pt").to(self.model.device)
                probs = torch.softmax(self.model(**batch).logits.float(), dim=-1)
                for row in probs.cpu().tolist():
                    out.append((self.labels[max(range(len(row)), key=row.__getitem__)], row))
        return out, self.count_tokens(texts)

    # -------------------------------------------------------------------------

    def lengths(self, texts: list[str]) -> list[int]:
        """Each text's tokens before any truncation (what /v1/embeddings checks against max_tokens)."""
        return [len(ids) for ids in self.tokenizer(texts, truncation=False, verbose=False)["input_ids"]]

    def count_tokens(self, texts: list[str], pairs: list[str] | None = None) -> int:
        """Tokens the model reads (after truncation to its limit), for usage."""
        encoded = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_tokens)["input_ids"]
        return sum(len(ids) for ids in encoded)


def load_encoder(name: str, spec: str, device: str = "cpu", dtype: Any = None) -> EncoderModel:
    folder = encoder_models.resolve_encoder(spec)
    task = encoder_models.detect_task(folder)
    card = encoder_models.read_task(folder) or {}
    if task == "embedding":
        from sentence_transformers.base.modules import Normalize

        model = encoder_models.load_embedder(folder, device, dtype)
        normalize = any(isinstance(m, Normalize) for m in model)
        return EncoderModel(name, task, str(folder), model, model.tokenizer, model.get_embedding_dimension(),
                            list(card.get("matryoshka_dims") or []), normalize, max_tokens=model.max_seq_length)
    if task == "reranker":
        model = encoder_models.load_reranker(folder, device, dtype)
        return EncoderModel(name, task, str(folder), model, model.tokenizer, max_tokens=model.max_seq_length)
    model, tokenizer = encoder_models.load_classifier(folder, device, dtype)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    positions = getattr(model.config, "max_position_embeddings", None) or 1 << 20
    limit = min(card.get("max_length") or 1 << 20, tokenizer.model_max_length, positions)
    return EncoderModel(name, task, str(folder), model, tokenizer, labels=labels, max_tokens=limit)


def load_encoders(specs: dict[str, str], device: str = "auto", dtype: str = "auto") -> dict[str, EncoderModel]:
    """Load each NAME -> folder (a run's final/, a sentence-transformers folder, a registry name), in the order
    given."""
    from tunesmith.models.load import pick_device, pick_dtype

    chosen = pick_device(device)
    torch_dtype = pick_dtype(dtype, chosen)
    pool: dict[str, EncoderModel] = {}
    for name, spec in specs.items():
        pool[name] = load_encoder(name, spec, chosen, torch_dtype)
        log.info("encoder %s: %s model from %s", name, pool[name].task, pool[name].folder)
    return pool


class NoChatEngine(Engine):
    """The engine of a deploy that serves only embedding, reranker or classifier models: no chat model, so the
    server answers chat and completions with a 404 naming what it serves (serve/serving.py)."""

    def model_names(self) -> list[str]:
        return []

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        raise UnknownModelError("this server has no chat model")

    def stream(self, request: GenerationRequest) -> Any:
        raise UnknownModelError("this server has no chat model")
