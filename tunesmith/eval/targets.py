"""What is evaluated, and how its answers are obtained.

A target is a local model, a run's adapter (or full fine-tune), or a running OpenAI-compatible endpoint. Local ones
answer through `tunesmith.infer.load_engine`, so prompts are rendered by the Template the model was trained with,
exactly as `tunesmith infer` and `deploy` render them; endpoints answer over HTTP (/v1/chat/completions).
Targets are evaluated one after another, each engine freed before the next loads.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from tunesmith.config import DEFAULT_MODEL
from tunesmith.config.eval import EvalConfig
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.eval.samples import Sample
from tunesmith.infer import GenerationRequest, SamplingParams

NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
HTTP_TIMEOUT_S = 600.0


@dataclass
class Target:
    name: str  # the row in the table
    kind: Literal["model", "adapters", "endpoint"]
    spec: str  # model name/folder/hub id, adapter folder, or endpoint URL (without #MODEL)
    base: str | None = None  # adapters: the base to load them on (None = the run's)
    served_model: str | None = None  # endpoint: the model to ask for (None = the first it lists)


@dataclass
class Answer:
    text: str  # what is scored: the answer without its reasoning
    finish_reason: str | None
    completion_tokens: int
    reasoning: str | None = None  # the <think> part (an endpoint's reasoning_content)


def targets_from(cfg: EvalConfig) -> list[Target]:
    """What eval asks for answers (or scores, --task retrieval ...), each checked before anything is written or loaded:
    every later path (the transformers and vLLM engines, lm-eval's `hf` model, EvalScope's served model) takes these."""
    out: list[Target] = []
    given: list[tuple[str, str]] = []  # (field, spec) of each local model named, for refuse_scorers
    if cfg.adapters:
        out.append(Target(run_name(cfg.adapters), "adapters", cfg.adapters, base=cfg.model))
        given += [("adapters", cfg.adapters), *([("model", cfg.model)] if cfg.model else [])]
    elif cfg.model:
        out.append(parse_spec(cfg.model, name=None, allow_endpoint=False))
        given.append(("model", cfg.model))
    for item in cfg.compare:
        name, sep, spec = item.partition("=")
        if not sep or not NAME.match(name) or not spec:
            name, spec = None, item  # a bare SPEC (a path may itself hold "=")
        out.append(parse_spec(spec, name))
        if out[-1].kind != "endpoint":
            given.append(("compare", spec))
    if cfg.task == "generation":  # --task reranking/classification evaluates scorers: they are what it is for
        refuse_scorers(given)
    if not out:
        out.append(Target(DEFAULT_MODEL, "model", DEFAULT_MODEL))
    seen: set[str] = set()
    for t in out:
        if t.name in seen:
            raise ConfigError(f"compare: two models are named {t.name!r}; name them NAME=SPEC")
        seen.add(t.name)
    return out


def parse_spec(spec: str, name: str | None, allow_endpoint: bool = True) -> Target:
    if spec.startswith(("http://", "https://")):
        if not allow_endpoint:
            raise ConfigError(f"model: {spec} is an endpoint; pass it as --compare NAME={spec}")
        url, _, served = spec.partition("#")
        parts = urlsplit(url)
        if not parts.netloc:
            raise ConfigError(f"compare: {spec} is not a URL like http://host:port/v1")
        return Target(name or parts.netloc, "endpoint", url.rstrip("/"), served_model=served or None)
    folder = Path(spec).expanduser()
    if (folder / "adapter_config.json").exists() or (folder / "reft" / "config.json").exists():  # reft: on its base
        return Target(name or run_name(spec), "adapters", spec)
    if folder.is_dir() and folder.name == "final":
        return Target(name or run_name(spec), "model", spec)  # a full fine-tune's final/: a model with its template
    return Target(name or Path(spec).name, "model", spec)


def refuse_scorers(given: list[tuple[str, str]]) -> None:
    """A reward model (`rlhf --method rm`'s final/) or another sequence classifier where eval needs a model that writes
    answers: refused by the field that named it, before any output file is written or any weights load. Here, because
    every eval path takes its models from targets_from: the transformers engine would refuse it only as it loads (after
    the output folder is made), and vLLM, lm-eval's `hf` model and EvalScope's served model would load it as a causal
    LM with the score head dropped and score its nonsense."""
    from tunesmith.models.load import refuse_scorer

    for field, spec in given:
        folder = _folder_here(spec)
        if folder is None:
            continue
        try:
            refuse_scorer(folder)
        except ConfigError as err:  # "FOLDER: a reward model ...: it scores answers ... Use it as --rewards.model ..."
            cached = "" if folder == Path(spec).expanduser() else f"{spec}, cached at "
            raise ConfigError(f"{field}: {cached}{err}") from None


def _folder_here(spec: str) -> Path | None:
    """The model folder `spec` names, if it is already on this machine: a folder, or a hub id in the hub cache (one
    not cached is downloaded only as it loads; registry names are chat models)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        return None
    from tunesmith.hub import cached_snapshot

    cached = cached_snapshot(spec)
    return Path(cached) if cached else None


def run_name(folder: str) -> str:
    path = Path(folder)
    return path.parent.name if path.name == "final" else path.name


def sampling_params(cfg: EvalConfig) -> SamplingParams:
    g = cfg.generation
    return SamplingParams(max_tokens=g.max_tokens, temperature=g.temperature, top_p=g.top_p, stop=list(g.stop), seed=g.seed)


def answer(target: Target, samples: list[Sample], cfg: EvalConfig) -> list[Answer]:
    from tqdm.auto import tqdm

    params = sampling_params(cfg)
    with tqdm(total=len(samples), desc=f"answering ({target.name})", unit="row") as bar:
        if target.kind == "endpoint":
            return asyncio.run(_answer_endpoint(target, samples, params, cfg, bar))
        return _answer_local(target, samples, params, cfg, bar)


# -----------------------------------------------------------------------------
# Local models, through the Engine


def _answer_local(target: Target, samples: list[Sample], params: SamplingParams, cfg: EvalConfig,
                  bar) -> list[Answer]:
    from tunesmith.infer import load_engine
    from tunesmith.infer.attention import kv_heads_in_sdpa
    from tunesmith.infer.batch import row_images

    if target.kind == "adapters":
        engine = load_engine(cfg.backend, target.base, {target.name: target.spec}, cfg.device, cfg.dtype, cfg.system,
                             chat_template_kwargs=cfg.chat_template_kwargs)
    else:
        engine = load_engine(cfg.backend, target.spec, None, cfg.device, cfg.dtype, cfg.system,
                             chat_template_kwargs=cfg.chat_template_kwargs)
    served = engine.model_names()[0]
    out: list[Answer] = []
    try:
        with kv_heads_in_sdpa(getattr(engine, "device", None)):  # on CPU: no repeat_kv copies
            for start in range(0, len(samples), cfg.batch_size):
                batch = samples[start: start + cfg.batch_size]
                images = [row_images(engine, served, s.messages, s.where) for s in batch]  # vision models' rows
                for sample, completion in zip(batch, engine.chat([s.messages for s in batch], params, model=served,
                                                                 images=images)):
                    choice = completion.choices[0]
                    split = engine.reasoning(GenerationRequest(messages=sample.messages, model=served))
                    reasoning, text = split.whole(choice.text) if split else (None, choice.text)  # as deploy answers
                    out.append(Answer(text, choice.finish_reason, choice.completion_tokens, reasoning))
                bar.update(len(batch))
    finally:
        engine.shutdown()
        del engine
        gc.collect()  # the next target loads into the memory this one held
    return out


# -----------------------------------------------------------------------------
# Endpoints, over HTTP


def check_endpoints(targets: list[Target], cfg: EvalConfig) -> None:
    """Before any local model loads: every endpoint answers /models; those without #MODEL take the first it lists."""
    async def check(t: Target) -> None:
        async with _client(cfg) as client:
            data = await _call(client, "GET", f"{t.spec}/models")
        served = [m["id"] for m in data.get("data", [])]
        if t.served_model is None:
            if not served:
                raise TunesmithError(f"{t.spec}/models lists no models; name one with --compare NAME={t.spec}#MODEL")
            t.served_model = served[0]

    for t in targets:
        if t.kind == "endpoint":
            asyncio.run(check(t))


def _client(cfg: EvalConfig):
    try:
        import httpx
    except ImportError:
        raise ConfigError("compare: endpoints are called with httpx: pip install 'tunesmith[serve]' (or httpx)") from None
    key = cfg.api_key or os.environ.get("OPENAI_API_KEY")
    return httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=HTTP_TIMEOUT_S)


async def _answer_endpoint(target: Target, samples: list[Sample], params: SamplingParams, cfg: EvalConfig,
                           bar) -> list[Answer]:
    limit = asyncio.Semaphore(cfg.batch_size)
    async with _client(cfg) as client:

        async def one(sample: Sample) -> Answer:
            messages = sample.messages
            if cfg.system is not None and (not messages or messages[0]["role"] != "system"):
                # as local models get --system (their template inserts it where a row has no system turn)
                messages = [{"role": "system", "content": cfg.system}, *messages]
            body = {"model": target.served_model, "messages": _openai_messages(messages),
                    "max_tokens": params.max_tokens,
                    "temperature": params.temperature, "top_p": params.top_p}
            if params.stop:
                body["stop"] = params.stop
            if params.seed is not None:
                body["seed"] = params.seed
            if cfg.chat_template_kwargs:  # vLLM's and tunesmith's extra field
                body["chat_template_kwargs"] = cfg.chat_template_kwargs
            async with limit:
                data = await _call(client, "POST", f"{target.spec}/chat/completions", json=body)
            bar.update(1)
            choice = data["choices"][0]
            return Answer(choice["message"].get("content") or "", choice.get("finish_reason"),
                          (data.get("usage") or {}).get("completion_tokens", 0),
                          choice["message"].get("reasoning_content"))

        return list(await asyncio.gather(*[one(s) for s in samples]))


def _openai_messages(messages: list[dict]) -> list[dict]:
    """Rows' image parts ({"type": "image", "image": path or data URI}) as OpenAI sends them: image_url parts with
    the picture inline as a data URI (an endpoint cannot read this machine's files)."""
    import mimetypes
    from pathlib import Path

    from tunesmith.data.images import as_data_uri, is_data_uri

    def part(p: dict) -> dict:
        if not (isinstance(p, dict) and p.get("type") == "image"):
            return p
        ref = p.get("image")
        if isinstance(ref, str) and not is_data_uri(ref) and Path(ref).is_file():
            ref = as_data_uri(Path(ref).read_bytes(), mimetypes.guess_type(ref)[0] or "image/png")
        return {"type": "image_url", "image_url": {"url": ref}}

    return [{**m, "content": [part(p) for p in m["content"]]} if isinstance(m.get("content"), list) else m
            for m in messages]


async def _call(client, method: str, url: str, **kwargs) -> dict:
    import httpx

    try:
        response = await client.request(method, url, **kwargs)
    except httpx.HTTPError as err:
        raise TunesmithError(f"{url}: cannot reach the endpoint ({type(err).__name__}: {err}). Is the server running "
                             "(tunesmith deploy ...) and does the URL end in /v1?") from None
    if response.status_code != 200:
        raise TunesmithError(f"{url}: answered {response.status_code}: {response.text[:300]}")
    return response.json()
