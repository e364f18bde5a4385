"""What every route shares, with no HTTP: the served names, request defaults and limits, and running admitted
requests over one engine, streamed or whole.

    serving = Serving(engine, DeployConfig(max_concurrent=8))
    reply = await create_chat_completion(serving, ChatCompletionRequest(model="prd", messages=[...]))  # chat.py
    reply = await create_completion(serving, CompletionRequest(model="prd", prompt="..."))            # completion.py

A request is admitted once (Serving.start): its prompt is rendered to ids once, those ids are checked against the
limits and the model's context and handed to the engine as they are, and it takes a concurrency slot. The
Generation it becomes adds up every Delta in one place (Answers), for streamed and whole answers alike. Errors are
APIError (errors.py); routes.py only dispatches; tests/serve drives this on a scripted engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

import anyio

from tunesmith.config import DeployConfig
from tunesmith.errors import ConfigError
from tunesmith.infer.common import base_name
from tunesmith.infer.types import Delta, Engine, EngineError, GenerationRequest, SamplingParams, TokenLogprob
from tunesmith.serve import keys
from tunesmith.serve.context import current
from tunesmith.serve.errors import APIError, engine_errors
from tunesmith.serve.guardrails import CONTENT_FILTER, Guard, Guards
from tunesmith.serve.images import ImagePolicy
from tunesmith.serve.metrics import Metrics, Slot, Slots, SpeculationCounts
from tunesmith.serve.protocol import ModelCard, ModelList, Usage
from tunesmith.serve.versions import Versions

if TYPE_CHECKING:
    from tunesmith.infer.encoders import EncoderModel

# what each task of an encoder model answers (`tunesmith deploy --encoders`)
ENCODER_ROUTES = {"embedding": "/v1/embeddings (and /v1/score)", "reranker": "/v1/rerank and /v1/score",
                  "classification": "/v1/classify"}
A_MODEL_OF = {"embedding": "an embedding model", "reranker": "a reranker", "classification": "a classifier"}


def served_names(cfg: DeployConfig, plain: list[str]) -> dict[str, str]:
    """Served name -> the engine's name, the engine's default first. --served-model-name renames --model's base
    where one is given (as vLLM's flag names the base beside its LoRA modules), else the default model: the first
    adapter, unless NAME=PATH already named it (two names for one model: refused, as a name taken by another model)."""
    names = {name: name for name in plain}
    new = cfg.served_model_name
    if not new:
        return names
    from tunesmith.serve.app import named_adapters

    target = base_name(cfg.model) if cfg.model and base_name(cfg.model) in names else plain[0]
    if target in named_adapters(cfg.adapters):
        raise ConfigError(f"served_model_name: the default model is the adapter you named {target!r} "
                          f"(--adapters {target}=...); name it once: drop --served-model-name, or use its name there")
    if new != target and new in names:
        raise ConfigError(f"served_model_name: {new!r} already names another served model; choose another name")
    return {(new if name == target else name): name for name in plain}


class Serving:
    def __init__(self, engine: Engine, cfg: DeployConfig, metrics: Metrics | None = None,
                 encoders: dict[str, EncoderModel] | None = None):
        self.engine, self.cfg = engine, cfg
        self.metrics = metrics or Metrics()
        self.slots = Slots(self.metrics, cfg.max_concurrent)
        if cfg.speculative and hasattr(engine, "speculation_counts"):  # the transformers engine's assisted generation
            self.metrics.registry.register(SpeculationCounts(engine))
        self.engine_names = engine.model_names()
        # models with versions (--model-config): the engine serves each version as MODEL:VERSION (versions.py)
        self.versions: Versions | None = None
        if cfg.model_versions:
            from tunesmith.config.serving import load_model_config

            self.versions = Versions(load_model_config(cfg.model_versions), self.metrics.registry)
            missing = sorted(set(self.versions.engine_names()) - set(self.engine_names))
            if missing:
                raise ConfigError(f"{cfg.model_versions}: the engine does not serve {', '.join(missing)}")
        plain = [n for n in self.engine_names if self.versions is None or not self.versions.split(n)]
        # served name -> the engine's name (--served-model-name renames one: served_names)
        self.names: dict[str, str] = served_names(cfg, plain) if plain else {}  # none: encoders or versions only
        clash = sorted(set(self.versions.models if self.versions else ()) & set(self.names))
        if clash:
            raise ConfigError(f"{cfg.model_versions}: {', '.join(clash)} also names an adapter or the base model; "
                              "name them apart")
        self.loading: set[str] = set()  # names the admin API is loading now (admin.py)
        self.guards = Guards.build(cfg.guardrails, self.metrics.registry)  # output policies per model
        self.images = ImagePolicy.from_config(cfg)  # where image_url parts may come from (images.py)
        self.guards.check_names(self.public_names())
        # the model a request that names none gets: the base or first adapter, else the first model with versions
        self.default = next(iter(self.names), None) or next(iter(self.versions.models if self.versions else ()), None)
        # embedding, reranker and classifier models by name (infer/encoders.py), beside the chat models
        self.encoders = encoders or {}
        clash = sorted(set(self.encoders) & set(self.names))
        if clash:
            raise ConfigError(f"encoders: {', '.join(clash)} also names a chat model or adapter; name them apart "
                              "(--encoders NAME=PATH)")

    @property
    def active(self) -> int:
        """Requests holding a slot."""
        return self.slots.active

    def public_names(self) -> list[str]:
        """The chat models a request may name by themselves: the plain ones, then the ones with versions."""
        return [*self.names, *(self.versions.models if self.versions else ())]

    def models(self) -> ModelList:
        versioned = [n for m in (self.versions.models.values() if self.versions else ())
                     for n in (m.name, *map(m.engine_name, m.paths))]
        from tunesmith.lineage import card
        from tunesmith.serve.app import adapter_map

        # each model's lineage.json, short: the base (--model) by its engine name, adapters by theirs
        folders = {**({self.cfg.model.rstrip("/").rsplit("/", 1)[-1]: self.cfg.model} if self.cfg.model else {}),
                   **adapter_map(self.cfg.adapters)}
        return ModelList(data=[ModelCard(id=name, lineage=card(folders.get(self.names.get(name, name))))
                               for name in [*self.names, *versioned, *self.encoders] if keys.visible(name)])

    def model_card(self, name: str) -> ModelCard:
        """GET /v1/models/{model} (the openai SDK's models.retrieve): the card /v1/models lists under that name; a
        model the request's key may not call is not found, as /v1/models does not list it."""
        cards = self.models().data
        for card in cards:
            if card.id == name:
                return card
        raise APIError(404, f"The model `{name}` does not exist here; served models: "
                       f"{', '.join(c.id for c in cards) or 'none'}", param="model", code="model_not_found")

    def model(self, name: str | None, user: str | None = None, count: bool = True) -> tuple[str, str]:
        """(the name answers carry, the engine's name for it). A model with versions answers as MODEL:VERSION, the
        version picked by its traffic split (sticky per `user` or header; versions.py) or named by the request, and
        counted per version in /metrics unless `count` is off (a request that generates nothing)."""
        public = self.default if name is None else name
        if public is not None:
            keys.check_model(public)  # 403 outside the request's key's scope
        if self.versions is not None and public is not None:
            ctx = current()
            if public in self.versions.models:
                version = self.versions.pick(public, user, ctx.headers if ctx else {}, count)
            elif (pinned := self.versions.split(public)) is not None:
                version = self.versions.count(*pinned) if count else pinned[1]
                public = pinned[0]
            else:
                version = None
            if version is not None:
                if ctx is not None:
                    ctx.version = version  # the x-tunesmith-version header (app.py's Gate)
                served = self.versions.models[public].engine_name(version)
                return served, served
        if public in self.names:
            return public, self.names[public]
        if public in self.encoders:  # no chat model of that name: 404, as the schema's model can be any name
            task = self.encoders[public].task
            raise APIError(404, f"The model `{public}` is {A_MODEL_OF[task]}; it answers {ENCODER_ROUTES[task]}, not "
                           "chat or completions", param="model", code="model_not_found")
        if not self.names and self.versions is None:
            others = ", ".join(f"{n} ({A_MODEL_OF[m.task]})" for n, m in self.encoders.items())
            raise APIError(404, f"this server has no chat model; it serves {others}", param="model",
                           code="model_not_found")
        raise APIError(404, f"The model `{name}` does not exist here; served chat models: "
                       f"{', '.join(self.public_names())}",
                       param="model", code="model_not_found")

    def encoder(self, name: str | None, tasks: tuple[str, ...], route: str) -> EncoderModel:
        """The embedding, reranker or classifier model a request names, or the first of a fitting task when it
        names none."""
        fitting = [n for n, m in self.encoders.items() if m.task in tasks]
        wanted = " or ".join(A_MODEL_OF[t] for t in tasks)
        if name is None:
            if not fitting:
                raise APIError(404, f"{route} needs {wanted} and this server has none; serve one with tunesmith "
                               "deploy --encoders NAME=runs/RUN/final", param="model", code="model_not_found")
            name = fitting[0]
        keys.check_model(name)  # 403 outside the request's key's scope
        if name in fitting:
            return self.encoders[name]
        if name in self.encoders or name in self.names:
            what = A_MODEL_OF[self.encoders[name].task] if name in self.encoders else "a chat model"
            raise APIError(404, f"The model `{name}` is {what}; {route} answers with {wanted}: "
                           f"{', '.join(fitting) or 'none here'}", param="model", code="model_not_found")
        raise APIError(404, f"The model `{name}` does not exist here; {route} models: {', '.join(fitting) or 'none'}",
                       param="model", code="model_not_found")

    async def run_encoder(self, encoder: EncoderModel, work: Callable[[], tuple[Any, int]]) -> tuple[Any, int]:
        """Run one encoder call (blocking: `work` returns its answer and the tokens it read) in a worker thread,
        holding a concurrency slot meanwhile; the tokens count in /metrics and against a scoped key's budget."""
        slot = self.slots.take(encoder.name)
        tokens = 0
        try:
            answer, tokens = await anyio.to_thread.run_sync(work)
        finally:
            slot.release(prompt_tokens=tokens)
        keys.charge(keys.current_caller(), tokens, 0)
        return answer, tokens

    # -------------------------------------------------------------------------
    # Requests: what they may ask for, defaults for what they leave out

    async def read_images(self, wanted: list[tuple[str, str]]) -> list:
        """The pictures of a request, (parameter, url) each, read in a worker thread under the server's image policy
        (images.py): too many is a 400 naming messages, one that cannot be used a 400 naming its parameter."""
        from tunesmith.serve.images import ImageRefused, read_image

        if len(wanted) > self.cfg.max_images:
            raise APIError(400, f"messages: {len(wanted)} images, more than this server takes in one request "
                           f"({self.cfg.max_images}, --max-images)", param="messages")

        def read_all() -> list:
            images = []
            for param, url in wanted:
                try:
                    images.append(read_image(url, self.images))
                except ImageRefused as err:
                    raise APIError(400, f"{param}: {err}", param=param) from None
            return images

        return await anyio.to_thread.run_sync(read_all) if wanted else []

    def refuse_unsupported(self, frequency_penalty: float | None, presence_penalty: float | None,
                           logit_bias: dict | None) -> None:
        for param, value in (("frequency_penalty", frequency_penalty), ("presence_penalty", presence_penalty)):
            if value:
                raise APIError(400, f"{param} is not supported by tunesmith's engines; leave it out or set it to 0",
                               param=param)
        if logit_bias:
            raise APIError(400, "logit_bias is not supported by tunesmith's engines; leave it out", param="logit_bias")

    def limit_max_tokens(self, value: int | None, param: str) -> None:
        limit = self.cfg.max_tokens_limit
        if value is not None and value > limit:
            raise APIError(400, f"{param} is {value}, more than this server allows ({limit}); ask for at most "
                           f"{limit}, or restart the server with a higher --max-tokens-limit", param=param)

    def sampling(self, max_tokens: int | None, temperature: float | None, top_p: float | None,
                 stop: str | list[str] | None, seed: int | None, n: int, logprobs: bool,
                 top_logprobs: int) -> SamplingParams:
        """What the request leaves out comes from the deploy config's `generation` section."""
        g, limit = self.cfg.generation, self.cfg.max_tokens_limit
        stops = [stop] if isinstance(stop, str) else list(g.stop if stop is None else stop)
        return SamplingParams(max_tokens=min(g.max_tokens, limit) if max_tokens is None else max_tokens,
                              temperature=g.temperature if temperature is None else temperature,
                              top_p=g.top_p if top_p is None else top_p, stop=[s for s in stops if s],
                              seed=g.seed if seed is None else seed % 2**63,  # what every engine takes (int64)
                              n=n, logprobs=logprobs, top_logprobs=top_logprobs)

    # -------------------------------------------------------------------------
    # Admission and running

    def start(self, gens: list[GenerationRequest], public: str, max_tokens_param: str | None) -> Generation:
        """Render each prompt once (also how an unknown model or a template error shows up, before any work),
        check the limits, take a slot. The engine then generates from exactly these ids.

        The model's context holds prompt and answer together. A prompt that fills it is refused (400,
        context_length_exceeded, as OpenAI and vLLM answer). So is prompt + max_tokens beyond it when the request
        asked for that max_tokens (`max_tokens_param` names the field): vLLM refuses too, and a client that asked for
        a length learns at once that it cannot have it. When max_tokens came from the server's defaults, it shrinks
        to the room left instead, as vLLM does when max_tokens is left out."""
        param = "messages" if gens[0].messages is not None else "prompt"
        with engine_errors(param):
            for gen in gens:
                gen.prompt_ids = self.engine.prompt_ids(gen)
            context = self.engine.context_length(gens[0].model)
        for gen in gens:
            self._fit(gen, context, param, max_tokens_param)
        slot = self.slots.take(public)
        return Generation(self.engine, gens, slot, sum(len(g.prompt_ids or []) for g in gens),
                          self.guards.for_model(public))

    def _fit(self, gen: GenerationRequest, context: int | None, param: str, max_tokens_param: str | None) -> None:
        length, max_tokens, limit = len(gen.prompt_ids or []), gen.params.max_tokens, self.cfg.max_prompt_tokens
        if length == 0:
            raise APIError(400, f"{param}: empty; the model needs at least one token to continue from", param=param)
        if context is not None and length >= context:
            raise APIError(400, f"This model's maximum context length is {context} tokens. However, your {param} "
                           f"resulted in {length} tokens, which leaves no room for an answer. Please reduce the "
                           f"length of the {param}.", param=param, code="context_length_exceeded")
        if limit is not None and length > limit:
            raise APIError(400, f"the prompt is {length} tokens, more than this server accepts ({limit} "
                           "tokens); shorten it, or restart the server with a higher --max-prompt-tokens",
                           param=param, code="context_length_exceeded")
        if context is None or length + max_tokens <= context:
            return
        if max_tokens_param is not None:
            raise APIError(400, f"This model's maximum context length is {context} tokens. However, you requested "
                           f"{length + max_tokens} tokens ({length} in the {param}, {max_tokens} in the completion). "
                           f"Please reduce the length of the {param}, or ask for {max_tokens_param} <= "
                           f"{context - length}.", param=max_tokens_param, code="context_length_exceeded")
        gen.params = dataclasses.replace(gen.params, max_tokens=context - length)

    async def stream(self, gen: GenerationRequest | list[GenerationRequest], public: str, max_tokens_param: str | None,
                     events: Callable[[Generation], AsyncIterator[str]]) -> EventStream:
        """Start generating and wait for the first Delta before answering, so errors at the start still get their
        own status code (404, 500) instead of a 200 with an error inside. Several requests (the prompts of one
        completion) stream together, their choices numbered as collect() numbers them."""
        generation = self.start(gen if isinstance(gen, list) else [gen], public, max_tokens_param)
        try:
            await generation.first()
        except BaseException:  # includes cancellation: free everything
            await generation.close()
            raise
        return EventStream(events(generation), generation.close)

    async def collect(self, gens: list[GenerationRequest], public: str, max_tokens_param: str | None) -> Answers:
        """Run every GenerationRequest to the end; prompt p's choices are p*n ... p*n + n-1."""
        generation = self.start(gens, public, max_tokens_param)
        try:
            with engine_errors():
                await generation.run()
        finally:
            await generation.close()
        return generation.answers


def refuse_stream_options_without_stream(stream: bool | None, stream_options: Any) -> None:
    """stream_options only shapes a stream (the usage chunk): without stream: true it would be dropped unread, so it
    is refused, as OpenAI refuses it."""
    if stream_options is not None and not stream:
        raise APIError(400, "stream_options is only allowed when stream is true; set stream: true or leave "
                       "stream_options out", param="stream_options")


def refuse_unencodable(value: Any, path: str = "") -> None:
    """JSON strings may hold lone UTF-16 surrogates ("\\ud800"), which are no text: no tokenizer encodes them.
    Refuse them naming the field, before anything tries."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise APIError(400, f"{path}: not valid Unicode text (a lone surrogate such as \\ud800 at character "
                           f"{err.start}); send UTF-8 text", param=path) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            refuse_unencodable(key, f"{path} (a key)" if path else "a key")
            refuse_unencodable(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            refuse_unencodable(item, f"{path}[{i}]")


# -----------------------------------------------------------------------------
# One admitted request: its slot, its engine streams, its answers


@dataclass
class Answer:
    """One choice, gathered from its Deltas."""

    text: str = ""
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    completion_tokens: int = 0
    stop: str | None = None  # the stop string that ended it, if one did


class Answers:
    """Every choice of one request, and the only place Deltas are added up."""

    def __init__(self, count: int, prompt_tokens: int):
        self.choices = [Answer() for _ in range(count)]
        self.prompt_tokens = prompt_tokens

    def add(self, delta: Delta, offset: int = 0) -> Answer:
        a = self.choices[offset + delta.index]
        if delta.finish_reason == CONTENT_FILTER:  # an output policy blocked it: the refusal is the answer
            a.text = ""
        a.text += delta.text
        a.logprobs += delta.logprobs
        a.completion_tokens = delta.completion_tokens
        if delta.finish_reason is not None:
            a.finish_reason, a.stop = delta.finish_reason, delta.stop
        return a

    @property
    def completion_tokens(self) -> int:
        return sum(a.completion_tokens for a in self.choices)

    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                     total_tokens=self.prompt_tokens + self.completion_tokens)


class Generation:
    """Admitted GenerationRequests running on the engine. It holds a slot until close(), which also stops the
    engine streams (when the client went away, say)."""

    def __init__(self, engine: Engine, gens: list[GenerationRequest], slot: Slot, prompt_tokens: int,
                 guard: Guard | None = None):
        self.n = gens[0].params.n
        self.answers = Answers(len(gens) * self.n, prompt_tokens)
        self.slot = slot
        self.caller = keys.current_caller()  # its scoped key is charged the tokens when it ends
        self.streams = [engine.stream(g) for g in gens]
        if guard is not None:  # the model's output policy (guardrails.py) between the engine and the answer
            self.streams = [guard.wrap(s, self.n) for s in self.streams]
        self._first: Delta | None = None

    def add(self, delta: Delta, offset: int = 0) -> Answer:
        self.slot.token()
        return self.answers.add(delta, offset)

    async def first(self) -> None:
        """Wait for the first Delta of the first stream (held for deltas())."""
        with engine_errors():
            self._first = await anext(self.streams[0])

    async def deltas(self) -> AsyncIterator[tuple[Delta, Answer]]:
        """Every stream's Deltas as they come, each with its choice so far; with several streams (prompts), prompt
        k's deltas are renumbered k*n + index, the choice numbers of the whole answer."""
        first, self._first = self._first, None
        if len(self.streams) == 1:  # chat, messages, a one-prompt completion: no task per stream
            if first is not None:
                yield first, self.add(first)
            async for delta in self.streams[0]:
                yield delta, self.add(delta)
            return
        queue: asyncio.Queue[tuple[Delta | None, BaseException | None]] = asyncio.Queue()

        async def pump(k: int, stream: AsyncIterator[Delta], held: Delta | None) -> None:
            try:
                if held is not None:
                    queue.put_nowait((held, None))
                async for delta in stream:
                    queue.put_nowait((dataclasses.replace(delta, index=k * self.n + delta.index), None))
                queue.put_nowait((None, None))
            except Exception as err:  # noqa: BLE001 - raised where the deltas are read
                queue.put_nowait((None, err))

        tasks = [asyncio.ensure_future(pump(k, s, first if k == 0 else None)) for k, s in enumerate(self.streams)]
        try:
            running = len(tasks)
            while running:
                delta, err = await queue.get()
                if err is not None:
                    raise err
                if delta is None:
                    running -= 1
                    continue
                yield delta, self.add(delta)
        finally:  # the client left or a stream failed: stop the others before close() closes their streams
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def run(self) -> None:
        """Every stream to its end."""

        async def drain(k: int, stream: AsyncIterator[Delta]) -> None:
            async for delta in stream:
                self.add(delta, k * self.n)

        tasks = [asyncio.ensure_future(drain(k, s)) for k, s in enumerate(self.streams)]
        try:
            await asyncio.gather(*tasks)
        finally:  # one prompt failed, or the client left: stop the others before their streams are closed
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if any(a.finish_reason is None for a in self.answers.choices):
            raise EngineError("the engine ended a choice without a finish_reason")

    async def close(self) -> None:
        for stream in self.streams:
            await stream.aclose()
        if self.slot.state != "done":
            keys.charge(self.caller, self.answers.prompt_tokens, self.answers.completion_tokens)
        self.slot.release(self.answers.prompt_tokens, self.answers.completion_tokens)


# -----------------------------------------------------------------------------
# Server-sent events


class EventStream:
    """The SSE lines of one streamed answer. Whoever sends them must call aclose() at the end, also when the
    client went away: it stops the generation and frees the request's slot."""

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], Awaitable[None]]):
        self.events, self.on_close = events, on_close

    def __aiter__(self) -> AsyncIterator[str]:
        return self.events

    async def aclose(self) -> None:
        await self.events.aclose()
        await self.on_close()


def sse(payload: str) -> str:
    return f"data: {payload}\n\n"


class Framing:
    """The SSE line of a chunk carrying one choice's text and nothing else, which is what most of a stream is:
    written from a template instead of building pydantic models and dumping them for every token. The template is
    pydantic's own dump of one such chunk (`sample(INDEX, TEXT)`), cut at the index and the text, so a line is byte
    for byte what `sse(sample(index, text).model_dump_json(...))` writes (tests/serve/test_stream_framing.py);
    json.dumps without ensure_ascii escapes a string as pydantic does (quotes, backslashes, control characters;
    other characters as UTF-8)."""

    INDEX, TEXT = 987654321, "tunesmith-text-mark"

    def __init__(self, sample: Callable[[int, str], Any], exclude: set[str] | None = None):
        line = sse(sample(self.INDEX, self.TEXT).model_dump_json(exclude=exclude))
        index, text = str(self.INDEX), json.dumps(self.TEXT)
        self.text_first = line.index(text) < line.index(index)  # completions write text before index, chat after
        head, rest = line.split(text if self.text_first else index, 1)
        middle, tail = rest.split(index if self.text_first else text, 1)
        self.head, self.middle, self.tail = head, middle, tail

    def text(self, index: int, text: str) -> str:
        # most pieces hold nothing JSON escapes: quoting them by hand skips json.dumps' encoder (~2 us a token)
        quoted = f'"{text}"' if _PLAIN_JSON.fullmatch(text) else json.dumps(text, ensure_ascii=False)
        if self.text_first:
            return f"{self.head}{quoted}{self.middle}{index}{self.tail}"
        return f"{self.head}{index}{self.middle}{quoted}{self.tail}"


DONE = sse("[DONE]")
# text that json.dumps(ensure_ascii=False) writes as it is: no quote, backslash or control character (U+0000-U+001F;
# DEL and the rest pass unescaped)
_PLAIN_JSON = re.compile(r'[^"\\\x00-\x1f]*')
