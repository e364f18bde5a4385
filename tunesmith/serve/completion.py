"""POST /v1/completions (OpenAI's legacy text completions), with no HTTP: a CompletionRequest in, a
CompletionResponse or the SSE lines of its chunks out.

    reply = await create_completion(serving, CompletionRequest(model="prd", prompt="Once upon", max_tokens=20))

The prompt is tokenized as is (no chat template). Several prompts are answered together, prompt p's choices
numbered p*n ... p*n + n-1 as OpenAI numbers them, whole or streamed.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import AsyncIterator

from tunesmith.infer.types import GenerationRequest, TokenLogprob
from tunesmith.serve.errors import APIError, stream_error
from tunesmith.serve.protocol import CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, Usage
from tunesmith.serve.serving import (
    DONE,
    EventStream,
    Framing,
    Generation,
    Serving,
    refuse_stream_options_without_stream,
    refuse_unencodable,
    sse,
)


async def create_completion(serving: Serving, req: CompletionRequest) -> CompletionResponse | EventStream:
    refuse_unencodable(req.model_dump(exclude_none=True))
    public, model = serving.model(req.model, req.user)
    serving.refuse_unsupported(req.frequency_penalty, req.presence_penalty, req.logit_bias)
    refuse_stream_options_without_stream(req.stream, req.stream_options)
    if req.suffix:
        raise APIError(400, "suffix (fill in the middle) is not supported; leave it out", param="suffix")
    if req.best_of not in (None, 1):
        raise APIError(400, f"best_of={req.best_of} is not supported (vLLM dropped it too); leave it out and ask for "
                       "n answers", param="best_of")
    if req.echo and req.logprobs is not None:
        raise APIError(400, "echo with logprobs needs prompt logprobs, which tunesmith's engines do not report",
                       param="echo")
    prompts = _prompts(req.prompt)
    serving.limit_max_tokens(req.max_tokens, "max_tokens")
    asked = "max_tokens" if req.max_tokens else None
    wants_logprobs = req.logprobs is not None
    params = serving.sampling(req.max_tokens, req.temperature, req.top_p, req.stop, req.seed, req.n, wants_logprobs,
                              req.logprobs or 0)
    gens = [GenerationRequest(prompt=p, model=model, params=params) for p in prompts]
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await serving.stream(gens, public, asked, lambda generation: _events(
            generation, rid, created, public, req, prompts, include_usage))
    answers = await serving.collect(gens, public, asked)
    choices = []
    for k, a in enumerate(answers.choices):
        echo = prompts[k // req.n] if req.echo else ""
        lp = _logprobs(a.logprobs, req.logprobs or 0) if wants_logprobs else None
        choices.append(CompletionChoice(text=echo + a.text, index=k, logprobs=lp, finish_reason=a.finish_reason))
    return CompletionResponse(id=rid, created=created, model=public, choices=choices, usage=answers.usage())


async def _events(generation: Generation, rid: str, created: int, public: str, req: CompletionRequest,
                  prompts: list[str], include_usage: bool) -> AsyncIterator[str]:
    """The echoed prompts first when asked, then each choice's text as it comes, a finish chunk per choice, a
    usage-only chunk when asked for, then [DONE]."""

    exclude = None if include_usage else {"usage"}

    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        c = CompletionResponse(id=rid, created=created, model=public, choices=choices, usage=usage)
        return sse(c.model_dump_json(exclude=exclude))

    # a chunk of text alone, the one sent per token, from a template (the same JSON; serving.Framing)
    text_only = Framing(lambda i, text: CompletionResponse(
        id=rid, created=created, model=public, choices=[CompletionChoice(text=text, index=i)]), exclude).text

    try:
        if req.echo:
            for i in range(len(prompts) * req.n):
                yield chunk([CompletionChoice(text=prompts[i // req.n], index=i)])
        async for delta, _ in generation.deltas():
            lp = _logprobs(delta.logprobs, req.logprobs or 0) if req.logprobs is not None else None
            if delta.text and lp is None:
                yield text_only(delta.index, delta.text)
            elif lp:
                yield chunk([CompletionChoice(text=delta.text, index=delta.index, logprobs=lp)])
            if delta.finish_reason is not None:
                yield chunk([CompletionChoice(text="", index=delta.index, finish_reason=delta.finish_reason)])
        if include_usage:
            yield chunk([], generation.answers.usage())
    except Exception as err:  # noqa: BLE001 - mid-stream the status is sent: report in the stream, keep serving
        yield sse(json.dumps(stream_error(err)))
    finally:
        await generation.close()
    yield DONE


def _prompts(prompt: str | list) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if not prompt:
        raise APIError(400, "prompt: empty list", param="prompt")
    raise APIError(400, "prompt: token-id prompts are not supported; send the text", param="prompt")


def _logprobs(logprobs: list[TokenLogprob], top: int) -> CompletionLogprobs:
    offsets, at = [], 0
    for t in logprobs:
        offsets.append(at)
        at += len(t.token)
    return CompletionLogprobs(tokens=[t.token for t in logprobs], token_logprobs=[t.logprob for t in logprobs],
                              top_logprobs=[dict(t.top) for t in logprobs] if top else None, text_offset=offsets)
