"""transformers backend: one TransformersEngine serving models loaded with transformers (and peft), shared by infer,
deploy, eval and RL rollouts.

    engine = TransformersEngine.load(model, adapters, device, dtype, versions=...)
    async for delta in engine.stream(request): ...

Where a request goes:
- By default: continuous batching (infer/continuous.py, transformers' paged-KV ContinuousBatchingManager, one per
  served model): requests join and leave a running batch at every decode step, so many concurrent requests share
  the model. An exception in one of its steps fails the requests of that step and stops the loop; the next request
  (or /health, through health()) finds it stopped and starts a new one; health() says why not when it cannot.
  Requests that would fail a step (an empty prompt, more tokens than the KV cache holds) are refused before they
  join.
- Requests asking for `logprobs` / `top_logprobs` or a `seed`, requests with a `response_format` grammar, and every
  request to a vision-language model take a serialised `generate()` path instead (infer/generate_paths.py).
  Correct, but one at a time.
- --speculative ngram[:N]: prompt lookup inside the continuous batch (infer/speculative_batch.py): greedy requests
  verify their proposals in the batch's own forward pass. --speculative draft=MODEL (infer/speculative.py): the
  other text requests take assisted generate() one at a time: transformers' continuous batching has no draft model.

Models (infer/served_models.py):
- Each named adapter (--adapters) is merged into its own copy of the base (exact in float32): memory grows with the
  number of adapters, every token costs what the base costs.
- Versions (deploy --model-config) and adapters loaded while serving (the admin API) share one copy of their base:
  each is a view of the base's module tree holding the very same weight tensors, with the LoRA layers added
  un-merged (peft), so another version costs its adapter's memory and its own KV cache, and loading one never
  reads the base again once it is in memory (add_model, remove_model).
"""

from __future__ import annotations

import functools
import threading
from typing import Any, AsyncIterator

from tunesmith.config import DEFAULT_MODEL
from tunesmith.errors import TunesmithError
from tunesmith.infer import generate_paths
from tunesmith.infer.common import (base_name, override_templates, pick_served, prompt_ids, reasoning_split,
                                    refuse_hidden_adapter)
from tunesmith.infer.continuous import BatchingLoops
from tunesmith.infer.decoding import GREEDY_BELOW
from tunesmith.infer.served_models import Served, is_vision, load_version, vision_served
from tunesmith.infer.speculative import Assistant, load_assistant
from tunesmith.infer.types import Delta, Engine, GenerationRequest
from tunesmith.models import load as models
from tunesmith.models.kernels import apply_kernels
from tunesmith.models.runs import read_run_output
from tunesmith.templates import Template


# deploy's default --admit-window-ms on a CUDA GPU: 0.5B shape, 64 streams x 3-6 requests on one H100, windows of 4-12 ms
# against none, alternated in one server at a time over three calls: 14,192 against 13,323 tok/s (docs/benchmarks.md)
ADMIT_WINDOW_MS_CUDA = 4.0


class TransformersEngine(Engine):
    def __init__(self, served: list[Served], max_batch_tokens: int | None = None, kv_cache_gib: float = 1.0,
                 attention: str = "auto", batching: dict[str, Any] | None = None, assistant: Assistant | None = None,
                 stream_interval: int = 1, admit_window_ms: float | None = None):
        self.served = {s.name: s for s in served}
        self.default = served[0].name
        self.assistant = assistant  # --speculative: a draft through assisted generate() (speculative.py), or ngram
        for s in served:
            if assistant is not None:
                assistant.check(s)
        self.exact_lock = threading.Lock()  # the generate() paths; batched requests join under it too
        in_batch = assistant.spec.tokens if assistant is not None and assistant.spec.method == "ngram" else None
        if in_batch is not None:  # refused at start-up, not at the first request
            from tunesmith.infer.speculative_batch import check_version

            check_version()
        self.loops = BatchingLoops(self.served, self.exact_lock, batching, max_batch_tokens, kv_cache_gib, attention,
                                   speculate=in_batch, stream_interval=stream_interval,
                                   admit_window_s=(admit_window_ms or 0.0) / 1000)
        self.bases: dict[str, Any] = {}  # base folder -> its model in memory, shared by the versions over it
        self.loads = 0  # models read from disk (bases, whole models): a version over a loaded base adds none
        self.device, self.dtype = "cpu", None  # set by load(): where versions loaded later go
        self.kernels = "none"  # set by load(): the fused layers of the text models it loads (use_kernels)
        self.overrides: tuple[str | None, dict | None] = (None, None)  # --system, --chat-template-kwargs

    @property
    def batching(self) -> dict[str, Any]:
        """ContinuousBatchingConfig fields over our defaults, for loops started from now on (bench/engine_decode.py)."""
        return self.loops.options

    @batching.setter
    def batching(self, options: dict[str, Any]) -> None:
        self.loops.options = options

    @classmethod
    def load(cls, model: str | None = None, adapters: dict[str, str] | None = None, device: str = "auto",
             dtype: str = "auto", system: str | None = None, chat_template_kwargs: dict | None = None,
             versions: dict[str, tuple[str, str | None]] | None = None, speculative: str | None = None,
             kernels: str = "auto", **options: Any) -> "TransformersEngine":
        """`versions`: served name -> (run folder, its base or None for the one the run recorded); they share their
        base (add_model). Without --model and --adapters only they are served, and nothing else is loaded.
        `speculative`: draft=MODEL or ngram[:N] (config/speculative.py). `kernels`: auto | liger | none, the fused
        layers text models run (use_kernels)."""
        refuse_hidden_adapter(model, adapters)
        device = models.pick_device(device)
        torch_dtype = models.pick_dtype(dtype, device)
        served: list[Served] = []
        bases: dict[str, Any] = {}
        loads = len(adapters or {}) + (1 if model or not (adapters or versions) else 0)
        for name, folder in (adapters or {}).items():
            run = read_run_output(folder)
            if is_vision(run.folder):  # a VLM run: its base comes from adapter_config.json (models/vision.py)
                served.append(vision_served(name, run.folder, torch_dtype, device))
                continue
            if run.is_adapter:
                base = models.load_model(models.resolve(model or run.base_model), dtype=torch_dtype, device=device)
                net = models.attach_adapters(base, run.folder, trainable=False).merge_and_unload()
            else:
                net = models.load_model(run.folder, dtype=torch_dtype, device=device)
            served.append(Served(name, net.eval(), Template.load(run.folder)))
        if (not served and not versions) or model:
            folder = models.resolve(model or DEFAULT_MODEL)
            if is_vision(folder):
                served.append(vision_served(base_name(model), folder, torch_dtype, device))
            else:
                net = models.load_model(folder, dtype=torch_dtype, device=device)
                served.append(Served(base_name(model), net.eval(), Template.load(folder)))
                bases[str(folder.resolve())] = net  # versions over the same base share it
        versions = dict(versions or {})
        if not served:  # versions only: the first one is the engine's default (the server routes by its own)
            name, (folder, base) = next(iter(versions.items()))
            first, read = load_version(name, folder, base or model, bases, torch_dtype, device)
            served.append(first)
            loads += read
            versions.pop(name)
        override_templates([s.template for s in served], system, chat_template_kwargs)
        if speculative:
            options["assistant"] = load_assistant(speculative, device, torch_dtype, served)
        if options.get("admit_window_ms") is None:  # --admit-window-ms unset (deploy): where it was measured to pay
            options["admit_window_ms"] = ADMIT_WINDOW_MS_CUDA if device.startswith("cuda") else 0.0
        engine = cls(served, **options)
        engine.bases.update(bases)
        engine.loads = loads
        engine.device, engine.dtype, engine.overrides = device, torch_dtype, (system, chat_template_kwargs)
        engine.kernels = kernels
        for s in served:
            engine.use_kernels(s)
        for name, (folder, base) in versions.items():
            engine.add_model(name, folder, base or model)
        return engine

    # -------------------------------------------------------------------------
    # Interface

    def model_names(self) -> list[str]:
        return list(self.served)

    def template_for(self, model: str | None) -> Template:
        return self._served(model).template

    def accepts_images(self, model: str | None = None) -> bool:
        return self._served(model).processor is not None

    def reasoning(self, request: GenerationRequest) -> Any:
        return reasoning_split(self._served(request.model).template, request)

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return len(self.prompt_ids(request))

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        return self._prompt_ids(self._served(request.model), request)

    def context_length(self, model: str | None = None) -> int | None:
        config = self._served(model).model.config.get_text_config()  # a VLM's language model holds the positions
        rope = getattr(config, "rope_parameters", None) or {}
        if rope.get("rope_type") == "dynamic":  # dynamic NTK stretches RoPE beyond the trained length (LongLoRA runs)
            return int(config.max_position_embeddings * rope["factor"])
        return getattr(config, "max_position_embeddings", None)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        served = self._served(request.model)
        if served.processor is not None:
            async for delta in generate_paths.stream_vision(served, self.exact_lock, request):
                yield delta
            return
        prompt = self._prompt_ids(served, request)
        p = request.params
        if not prompt:
            raise TunesmithError("the prompt is empty: the model needs at least one token to continue from")
        if request.response_format is not None:
            from tunesmith.infer.grammar import compile_response_format

            grammar = compile_response_format(request.response_format)
            if grammar is not None:
                async for delta in generate_paths.stream_constrained(served, self.exact_lock, prompt, p, grammar):
                    yield delta
                return
        if p.logprobs or p.top_logprobs:  # the model's own distribution per token: the answer comes whole
            async for delta in generate_paths.stream_exact(served, self.exact_lock, prompt, p):
                yield delta
            return
        from tunesmith.models.reft import needs_whole_prompt

        if needs_whole_prompt(served.model) or (p.seed is not None and p.temperature >= GREEDY_BELOW):
            # generate() streamed token by token: a seed reseeds torch for this request alone, which a shared batch
            # cannot (the same tokens as the exact path's generate(), which was one chunk at the end). LoReFT at
            # prompt positions (models/reft.py) finds them in a forward over the whole prompt: generate()'s prefill
            # (the batch's prefills are chunked and ragged; --speculative's first forward would hold the draft's
            # tokens beside the prompt, so it is not used for these models)
            inputs = generate_paths.token_inputs(prompt)

            def generate(choice: int, streamer: Any) -> None:
                generate_paths.generate_streamed(served, self.exact_lock, inputs, p, choice, streamer)

            async for delta in generate_paths.stream_threaded(served, p, len(prompt), "generate()", generate):
                yield delta
            return
        if self.assistant is not None and self.assistant.spec.method == "draft":
            count = functools.partial(self.assistant.count_step, served.name)
            async for delta in generate_paths.stream_assisted(served, self.exact_lock, prompt, p,
                                                              self.assistant.options(served), count):
                yield delta
            return
        async for delta in self.loops.stream(served, prompt, p):
            yield delta

    def health(self) -> str | None:
        """None when every loop that was started runs (a stopped one is restarted here); else why not."""
        return self.loops.health()

    def speculation_counts(self) -> dict[str, tuple[int, int, int | None]]:
        """--speculative: per served model, (verification steps, proposed tokens accepted, tokens proposed). ngram:
        a step is one request's decode step that carried proposals; draft: one step of assisted generate(), which
        does not say how many tokens it proposed (None)."""
        if self.assistant is None:
            return {}
        if self.assistant.spec.method == "ngram":
            return {name: (c.steps, c.accepted, c.proposed) for name, c in self.loops.speculation.items()}
        return {name: (c[0], c[1] - c[0], None) for name, c in self.assistant.counts.items()}

    async def close(self) -> None:
        for s in list(self.served.values()):
            self.loops.stop(s)

    # -------------------------------------------------------------------------
    # Models added and removed while serving (versions, the admin API)

    def add_model(self, name: str, folder: str, base: str | None = None) -> None:
        """Serve the run at `folder` as `name`: an adapter becomes a view over its base (read from disk only when
        no served version uses it yet), a whole model is loaded as is. Blocking: call it from a worker thread."""
        if name in self.served:
            raise TunesmithError(f"{name} is served already")
        served, loads = load_version(name, folder, base, self.bases, self.dtype, self.device)
        self.use_kernels(served)
        if self.assistant is not None:
            self.assistant.check(served)
        self.loads += loads
        system, kwargs = self.overrides
        override_templates([served.template], system, kwargs)
        self.served[name] = served

    def use_kernels(self, served: Served, kernels: str | None = None) -> None:
        """liger's fused RMSNorm, RoPE and SwiGLU on a text model on CUDA (models/kernels.py). A decode step is a
        chain of tiny kernels, each costing a few microseconds of the GPU even inside a CUDA graph: the fused layers
        launch ~26 fewer per decoder layer per step. Every path of the model (the batch, the generate() paths)
        runs them from its load on, so they all answer alike. Vision-language models keep their own layers."""
        if served.processor is None:
            served.kernels = apply_kernels(kernels or self.kernels, served.model, self.device)

    def remove_model(self, name: str) -> None:
        """Stop serving `name` (its batching loop and cache go; a shared base stays). Requests still running on it
        fail, so the server removes a model only once its last request has finished. Blocking."""
        if name == self.default:
            raise TunesmithError(f"{name} is the default model; it cannot be removed")
        served = self.served.pop(name, None)
        if served is None:
            raise TunesmithError(f"{name} is not served here")
        self.loops.stop(served)

    # -------------------------------------------------------------------------

    def _served(self, model: str | None) -> Served:
        return pick_served(self.served, self.default, model)

    def _prompt_ids(self, served: Served, request: GenerationRequest) -> list[int]:
        if served.processor is not None:  # encoded once: stream() takes them from the request
            request.encoded = generate_paths.vision_inputs(served, request)
            return request.encoded["input_ids"][0].tolist()
        if request.images:
            raise TunesmithError(f"{served.name} reads text only; images need a vision-language model")
        return prompt_ids(served.template, request)
