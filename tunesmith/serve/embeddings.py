"""POST /v1/embeddings, with no HTTP: OpenAI's EmbeddingRequest in, its response out.

    reply = await create_embeddings(serving, EmbeddingRequest(model="embed", input=["a", "b"], dimensions=128))

As OpenAI answers it, so `client.embeddings.create(...)` of the official SDK works unchanged (the SDK asks for
encoding_format base64 by default and decodes little-endian float32 itself). `dimensions` cuts a Matryoshka model's
embedding to its first N values and re-normalises it (OpenAI's text-embedding-3 and vLLM do the same); a model trained
without Matryoshka dimensions refuses it, as vLLM does, since its prefixes mean little alone. Input is text: a string
or a list of strings (OpenAI's token-id arrays are refused by the schema; send the text). A text longer than the model
reads is refused with context_length_exceeded naming it, as OpenAI and vLLM answer, rather than embedded from its start.
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from tunesmith.serve.errors import APIError
from tunesmith.serve.protocol import Strict, integer
from tunesmith.serve.serving import Serving, refuse_unencodable

MAX_INPUTS = 2048  # OpenAI's limit per request

Text = Annotated[str, Field(min_length=1)]


class EmbeddingRequest(Strict):
    input: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]
    model: str | None = None  # tunesmith: may be left out to use the first embedding model served
    dimensions: integer(ge=1) | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str  # a string with encoding_format base64: little-endian float32
    index: int


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


async def create_embeddings(serving: Serving, req: EmbeddingRequest) -> EmbeddingResponse:
    refuse_unencodable(req.input, "input")
    encoder = serving.encoder(req.model, ("embedding",), "/v1/embeddings")
    texts = [req.input] if isinstance(req.input, str) else req.input
    dims = req.dimensions
    if dims is not None and dims != encoder.dimensions:
        if dims > encoder.dimensions:
            raise APIError(400, f"dimensions is {dims}; `{encoder.name}` embeds into {encoder.dimensions}",
                           param="dimensions")
        if not encoder.matryoshka_dims:
            raise APIError(400, f"`{encoder.name}` was not trained with Matryoshka dimensions, so a shortened "
                           "embedding means little; leave dimensions out, or train with --embedding.matryoshka-dims",
                           param="dimensions", code="model_not_supported")
    refuse_too_long(encoder, texts, single=isinstance(req.input, str))
    vectors, tokens = await serving.run_encoder(encoder, lambda: encoder.embed(texts, dims))
    data = [Embedding(embedding=_base64(v) if req.encoding_format == "base64" else v, index=i)
            for i, v in enumerate(vectors)]
    return EmbeddingResponse(data=data, model=encoder.name, usage=EmbeddingUsage(prompt_tokens=tokens,
                                                                                 total_tokens=tokens))


def refuse_too_long(encoder, texts: list[str], single: bool) -> None:
    """A text longer than the model reads would be embedded from its start only, and the vector would stand for
    less than was sent: refused naming it (400 context_length_exceeded), as OpenAI and vLLM answer."""
    if encoder.max_tokens is None:
        return
    for i, length in enumerate(encoder.lengths(texts)):
        if length > encoder.max_tokens:
            param = "input" if single else f"input[{i}]"
            raise APIError(400, f"This model's maximum context length is {encoder.max_tokens} tokens. However, {param} "
                           f"has {length} tokens. Please shorten it, or split it and embed the parts.", param=param,
                           code="context_length_exceeded")


def _base64(vector: list[float]) -> str:
    import numpy as np

    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def dimensions_schema(encoders: dict) -> dict | None:
    """`dimensions` in /openapi.json (openapi.py): the values every embedding model served accepts, whichever the
    request names: 1 up to the smallest size where all are Matryoshka models, else that size alone where it is each
    other model's own; None where no value suits all (the field is then documented as null only)."""
    models = [m for m in encoders.values() if m.task == "embedding"]
    smallest = min(m.dimensions for m in models)
    fixed = {m.dimensions for m in models if not m.matryoshka_dims}
    if not fixed:
        return {"type": "integer", "minimum": 1, "maximum": smallest}
    return {"type": "integer", "enum": [smallest]} if fixed == {smallest} else None
