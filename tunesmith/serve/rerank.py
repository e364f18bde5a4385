"""POST /v1/rerank (the Cohere/Jina schema, as vLLM serves it) and POST /v1/score (vLLM's), with no HTTP.

    reply = await create_rerank(serving, RerankRequest(model="rerank", query="q", documents=["a", "b"], top_n=1))
    reply = await create_score(serving, ScoreRequest(model="rerank", text_1="q", text_2=["a", "b"]))

Rerank: every document scored against the query by a reranker (a cross-encoder), the results sorted best first,
cut to top_n (absent or 0: all, as vLLM), each with its index in the request and, unless return_documents is false,
its text. relevance_score is the reranker's own predict() score (a sigmoid for a one-label cross-encoder), so the
order is exactly sentence-transformers' CrossEncoder.rank. Score: pairs (text_1[i], text_2[i]); a single text_1 is
paired with every text_2. A reranker scores the pair; an embedding model answers the cosine of the two embeddings.
"""

from __future__ import annotations

import time
import uuid
from functools import partial
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from tunesmith.serve.errors import APIError
from tunesmith.serve.protocol import Lenient, Strict, documented, integer
from tunesmith.serve.serving import Serving, refuse_unencodable

MAX_DOCUMENTS = 1000  # Cohere's limit per request

Text = Annotated[str, Field(min_length=1)]


class DocumentIn(Lenient):
    """Cohere's and Jina's document object; only its text is read."""

    text: Text


class RerankRequest(Strict):
    model: str | None = None  # tunesmith: may be left out to use the first reranker served
    query: Text
    documents: Annotated[list[Text | DocumentIn], Field(min_length=1, max_length=MAX_DOCUMENTS)]
    top_n: integer(ge=0) | None = None  # absent or 0: every document, ranked
    return_documents: bool = True


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    document: RerankDocument | None = None  # left out with return_documents false
    relevance_score: float


class RerankUsage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    usage: RerankUsage
    results: list[RerankResult]


async def create_rerank(serving: Serving, req: RerankRequest) -> RerankResponse:
    refuse_unencodable(req.model_dump(exclude_none=True))
    encoder = serving.encoder(req.model, ("reranker",), "/v1/rerank")
    texts = [d if isinstance(d, str) else d.text for d in req.documents]
    scores, tokens = await serving.run_encoder(encoder, lambda: encoder.score(req.query, texts))
    order = sorted(range(len(texts)), key=lambda i: -scores[i])  # stable: ties keep the request's order
    if req.top_n:
        order = order[:req.top_n]
    results = [RerankResult(index=i, relevance_score=scores[i],
                            document=RerankDocument(text=texts[i]) if req.return_documents else None) for i in order]
    return RerankResponse(id=f"rerank-{uuid.uuid4().hex}", model=encoder.name, usage=RerankUsage(total_tokens=tokens),
                          results=results)


# -----------------------------------------------------------------------------
# /v1/score


class ScoreRequest(Strict):
    model: str | None = None  # tunesmith: may be left out to use the first reranker (else embedding model) served
    # several text_1 pair one to one with as many text_2, which JSON Schema cannot say: documented as one text
    text_1: Annotated[Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_DOCUMENTS)], documented({
        "anyOf": [{"type": "string", "minLength": 1},
                  {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 1}],
        "description": "One text scored against every text_2; a list as long as text_2 scores the pairs "
                       "(text_1[i], text_2[i])."})]
    text_2: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_DOCUMENTS)]


class ScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class ScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[ScoreData]
    usage: ScoreUsage


async def create_score(serving: Serving, req: ScoreRequest) -> ScoreResponse:
    refuse_unencodable(req.model_dump(exclude_none=True))
    name = req.model
    if name is None:  # a reranker first, scoring pairs is what it is for; else the first embedding model
        name = next((n for n, m in serving.encoders.items() if m.task == "reranker"), None)
    encoder = serving.encoder(name, ("reranker", "embedding"), "/v1/score")
    first = [req.text_1] if isinstance(req.text_1, str) else req.text_1
    second = [req.text_2] if isinstance(req.text_2, str) else req.text_2
    if len(first) == 1:
        first = first * len(second)
    elif len(first) != len(second):
        raise APIError(400, f"text_1 has {len(first)} texts and text_2 {len(second)}; give as many of each, or one "
                       "text_1 to score against every text_2", param="text_1")
    work = partial(encoder.score_pairs, list(zip(first, second))) if encoder.task == "reranker" else \
        partial(encoder.similarity, first, second)  # an embedding model: the cosine of the two embeddings
    scores, tokens = await serving.run_encoder(encoder, work)
    return ScoreResponse(id=f"score-{uuid.uuid4().hex}", model=encoder.name,
                         data=[ScoreData(index=i, score=s) for i, s in enumerate(scores)],
                         usage=ScoreUsage(prompt_tokens=tokens, total_tokens=tokens))
