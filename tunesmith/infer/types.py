"""What every inference backend takes and yields. `serve/`, `eval/` and RL rollouts speak only these types.

    engine = load_engine("transformers", model="smollm2-135m-instruct", adapters={"prd": "runs/prd/final"})
    async for delta in engine.stream(GenerationRequest(messages=[...], model="prd", params=SamplingParams(n=2))):
        ...  # Delta(index=choice, text=new text, finish_reason=None until the choice ends)
    completion = await engine.generate(request)     # the same, collected
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator

if TYPE_CHECKING:
    from tunesmith.templates import Template


class EngineError(Exception):
    """Generation failed inside the backend (not the caller's fault). The server answers 500 and keeps serving."""


class UnknownModelError(Exception):
    """The request named a model or adapter this engine does not serve (the server answers 404)."""


@dataclass
class SamplingParams:
    """OpenAI's names. temperature 0 = greedy."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass
class GenerationRequest:
    messages: list[dict] | None = None  # chat: rendered by the served model's Template (the one it was trained with)
    prompt: str | None = None  # plain completion: the text is tokenized as is
    tools: list[dict] | None = None  # OpenAI tool definitions, rendered by the chat template
    model: str | None = None  # a served model or adapter name; None = the default
    params: SamplingParams = field(default_factory=SamplingParams)
    prompt_ids: list[int] | None = None  # rendered already (Engine.prompt_ids): generated from as given
    chat_template_kwargs: dict | None = None  # this request's template variables, over the served template's own
    response_format: dict | None = None  # OpenAI's: json_object or json_schema constrain the answer (infer/grammar.py)
    assistant_prefix: str | None = None  # the answer starts with this text (Anthropic's prefill); it continues it
    images: list | None = None  # PIL images for a vision model, one per {"type": "image"} part of the messages, in order
    encoded: Any = None  # the engine's own: a vision model's encoded inputs, from prompt_ids() for stream()


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)
    # the tokens' own bytes (decoding.token_bytes): part of a UTF-8 character where `token` shows U+FFFD; None where
    # the engine knows only the text (then its UTF-8)
    token_bytes: bytes | None = None
    top_bytes: list[bytes | None] = field(default_factory=list)


@dataclass
class Delta:
    """One streamed piece of one choice."""

    index: int
    text: str
    finish_reason: str | None = None  # None while generating; then "stop" or "length"
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0  # so far, for this choice
    stop: str | None = None  # the stop string that ended the choice (Anthropic's stop_sequence); else None


@dataclass
class Choice:
    index: int
    text: str
    finish_reason: str
    logprobs: list[TokenLogprob] = field(default_factory=list)
    completion_tokens: int = 0


@dataclass
class Completion:
    choices: list[Choice]
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices)


class Engine(ABC):
    """A loaded model (plus named adapters) that answers GenerationRequests."""

    @abstractmethod
    def model_names(self) -> list[str]:
        """Names a request's `model` may take; the first is the default."""

    @abstractmethod
    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        """Prompt length in tokens, as the model will see it (for limits, before generating)."""

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The prompt as the model will see it. The server renders once: it checks these ids against its limits and
        sets request.prompt_ids, which stream() then uses instead of rendering again."""
        raise NotImplementedError(f"{type(self).__name__} does not render prompts ahead of stream()")

    @abstractmethod
    def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Yield Deltas of all n choices, interleaved, each choice ending with a finish_reason."""

    def accepts_images(self, model: str | None = None) -> bool:
        """Whether the served model reads images (a vision-language model); requests with images to any other are
        refused by name."""
        return False

    def template_for(self, model: str | None) -> Template | None:
        """The chat template that renders the model's prompts; None for an engine that renders them its own way."""
        return None

    def reasoning(self, request: GenerationRequest) -> Any:
        """A fresh templates.ReasoningSplit for one choice of this chat request (it keeps state while streaming), or
        None when the served template writes no reasoning for this prompt (none at all, or thinking off)."""
        return None

    def context_length(self, model: str | None = None) -> int | None:
        """Most tokens, prompt and answer together, the model takes (None: unknown, nothing is checked)."""
        return None

    def health(self) -> str | None:
        """None when the engine can generate; otherwise why not (the server's /health answers 503 with it). May
        block for a while: it may restart what stopped."""
        return None

    def add_model(self, name: str, folder: str, base: str | None = None) -> None:
        """Serve the run at `folder` as `name` from now on (a version, or an adapter loaded through the admin API);
        an adapter shares `base` with the models already over it. Blocking: may read weights for seconds."""
        raise NotImplementedError(f"{type(self).__name__} cannot load models while serving (the transformers and "
                                  "vllm backends can)")

    def remove_model(self, name: str) -> None:
        """Stop serving `name`; its memory goes, a base other models share stays. Blocking."""
        raise NotImplementedError(f"{type(self).__name__} cannot unload models while serving (the transformers and "
                                  "vllm backends can)")

    async def generate(self, request: GenerationRequest) -> Completion:
        texts: dict[int, list[str]] = {}
        finals: dict[int, Delta] = {}
        logprobs: dict[int, list[TokenLogprob]] = {}
        prompt_tokens = 0
        async for delta in self.stream(request):
            texts.setdefault(delta.index, []).append(delta.text)
            logprobs.setdefault(delta.index, []).extend(delta.logprobs)
            prompt_tokens = max(prompt_tokens, delta.prompt_tokens)
            if delta.finish_reason is not None:
                finals[delta.index] = delta
        choices = [Choice(i, "".join(texts[i]), finals[i].finish_reason, logprobs[i], finals[i].completion_tokens)
                   for i in sorted(finals)]
        return Completion(choices, prompt_tokens)

    async def close(self) -> None:
        """Stop background work; finish what is running."""

    # -------------------------------------------------------------------------
    # Synchronous forms, for `tunesmith infer` and scripts: the same code path as the server.

    def chat(self, requests: list[list[dict]], params: SamplingParams, model: str | None = None,
             images: list[list] | None = None) -> list[Completion]:
        """Answer several conversations at once (they share the running batch). `images`: each conversation's
        pictures (vision models), one per {"type": "image"} part of its messages, in order."""

        async def run() -> list[Completion]:
            pictures = images or [None] * len(requests)
            return await asyncio.gather(*[self.generate(GenerationRequest(messages=m, model=model, params=params,
                                                                          images=pics or None))
                                          for m, pics in zip(requests, pictures)])

        return asyncio.run(run())

    def stream_text(self, messages: list[dict], params: SamplingParams, model: str | None = None,
                    images: list | None = None) -> Iterator[str]:
        """Yield the text of one answer as it is generated. Stopped early (the caller breaks off, or Ctrl-C lands
        while a step runs), the engine stops generating it."""
        loop = asyncio.new_event_loop()
        deltas = self.stream(GenerationRequest(messages=messages, model=model, params=params, images=images or None))
        step: asyncio.Future | None = None
        try:
            while True:
                step = asyncio.ensure_future(deltas.__anext__(), loop=loop)
                try:
                    delta = loop.run_until_complete(step)
                except StopAsyncIteration:
                    return
                if delta.index == 0:
                    yield delta.text
        finally:
            if step is not None and not step.done():
                # a KeyboardInterrupt left the loop mid-step, the generator running inside it: cancel the step, so
                # the generator ends through its own cleanup (the batch drops the request), instead of aclose()
                # failing on a running generator and the request generating on behind the caller's back
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    loop.run_until_complete(step)
            loop.run_until_complete(deltas.aclose())
            loop.close()

    def shutdown(self) -> None:
        asyncio.run(self.close())
