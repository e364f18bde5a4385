"""POST /v1/classify (vLLM's classification API), with no HTTP.

    reply = await create_classification(serving, ClassificationRequest(model="clf", input=["a text", "another"]))

Each input gets the label of its highest probability (the model's id2label, saved by `tunesmith sft --task
classification`) and the softmax over every class, in id order.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from tunesmith.serve.protocol import Strict
from tunesmith.serve.serving import Serving, refuse_unencodable

MAX_INPUTS = 2048

Text = Annotated[str, Field(min_length=1)]


class ClassificationRequest(Strict):
    model: str | None = None  # tunesmith: may be left out to use the first classifier served
    input: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]


class ClassificationData(BaseModel):
    index: int
    label: str
    probs: list[float]
    num_classes: int


class ClassificationUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class ClassificationResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[ClassificationData]
    usage: ClassificationUsage


async def create_classification(serving: Serving, req: ClassificationRequest) -> ClassificationResponse:
    refuse_unencodable(req.input, "input")
    encoder = serving.encoder(req.model, ("classification",), "/v1/classify")
    texts = [req.input] if isinstance(req.input, str) else req.input
    answers, tokens = await serving.run_encoder(encoder, lambda: encoder.classify(texts))
    data = [ClassificationData(index=i, label=label, probs=probs, num_classes=len(probs))
            for i, (label, probs) in enumerate(answers)]
    return ClassificationResponse(id=f"classify-{uuid.uuid4().hex}", model=encoder.name, data=data,
                                  usage=ClassificationUsage(prompt_tokens=tokens, total_tokens=tokens))
