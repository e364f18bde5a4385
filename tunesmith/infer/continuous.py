"""The transformers engine's continuous batching: one transformers ContinuousBatchingManager (paged KV cache) per
served model, started on first use and again after a failed step; requests join and leave the running batch at
every decode step.

    loops = BatchingLoops(engine.served, lock, options)
    async for delta in loops.stream(served, prompt_ids, params): ...

The manager samples or argmaxes for all requests alike. It runs in sampling mode and greedy requests (temperature
below 1e-5, as vLLM counts them) go at a vanishing temperature: the probabilities become one-hot, so sampling returns
the argmax. Smaller temperatures as given would overflow the logits (1e-40 makes them inf, softmax makes them nan,
and the failed sampling step stopped the loop for every request). With transformers 5.23 a step of greedy requests
only takes the argmax instead (infer/greedy_steps.py); another transformers version samples every step as above.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from tunesmith.errors import TunesmithError
from tunesmith.infer.admission import Admission
from tunesmith.infer.carry_over import install_carry_over, install_used_index_copies
from tunesmith.infer.decoding import GREEDY_BELOW, GREEDY_TEMPERATURE, Decoder
from tunesmith.infer.greedy_steps import (
    SUPPORTED,
    GreedySteps,
    patch_batch_processors,
    transformers_minor,
)
from tunesmith.infer.read_indices import ReadIndices
from tunesmith.infer.served_models import Served
from tunesmith.infer.speculative_batch import BatchSpeculation, SpeculationCounts
from tunesmith.infer.types import Delta, EngineError, SamplingParams

log = logging.getLogger("tunesmith")
LOOP_POLL_S = 1.0  # how often a request waiting for output checks that the loop still runs


class BatchingLoops:
    """The batching loops of `served` (the engine's registry, read as it changes). `lock` is the generate() paths'
    lock: requests join a batch only while holding it, so generate() never runs beside a batching step. `options`:
    ContinuousBatchingConfig fields over our defaults (bench/engine_decode.py); `kv_cache_gib` bounds each loop's
    cache on CPU (like vLLM's VLLM_CPU_KVCACHE_SPACE). `speculate`: --speculative ngram:N's N, verified inside the
    batch (infer/speculative_batch.py; None: off), counted per served model in `speculation`. `fast_paths`: the
    argmax on greedy steps (infer/greedy_steps.py), the numpy read index (infer/read_indices.py) and carry-over map
    (infer/carry_over.py); off only in bench/engine_decode.py, to measure what they gain. `admit_window_s`: deploy
    --admit-window-ms, how long requests arriving at a busy batch wait to join it together (infer/admission.py)."""

    def __init__(self, served: dict[str, Served], lock: threading.Lock, options: dict[str, Any] | None = None,
                 max_batch_tokens: int | None = None, kv_cache_gib: float = 1.0, attention: str = "auto",
                 speculate: int | None = None, stream_interval: int = 1, admit_window_s: float = 0.0):
        self.served, self.lock = served, lock
        self.speculate = speculate
        self.stream_interval = stream_interval  # deploy --stream-interval: outputs passed on (every_nth_output)
        self.admit_window_s = admit_window_s
        self.admissions: dict[str, Admission] = {}  # served name -> its batch's gate
        self.fast_paths = True
        self.decode_rows = True  # decode-only steps pack query heads as attention rows (infer/attention.py)
        self.speculation: dict[str, SpeculationCounts] = {}
        self.options = options or {}
        self.max_batch_tokens, self.kv_cache_gib = max_batch_tokens, kv_cache_gib
        self.attention = attention  # auto | varlen | sdpa: see pick_attention
        self.start_lock = threading.Lock()
        self.failed: dict[str, str] = {}  # served name -> why its loop cannot start

    async def stream(self, served: Served, prompt: list[int], p: SamplingParams) -> AsyncIterator[Delta]:
        manager = self.manager(served)
        capacity = cache_tokens(manager)
        if capacity and len(prompt) + p.max_tokens > capacity:
            raise TunesmithError(f"the prompt ({len(prompt)} tokens) and max_tokens ({p.max_tokens}) need more KV "
                                 f"cache than this server holds for one request ({capacity} tokens); shorten the "
                                 "prompt or ask for fewer tokens")
        queue: asyncio.Queue = asyncio.Queue()
        ids = [f"{uuid.uuid4().hex}-{i}" for i in range(p.n)]
        index = {rid: i for i, rid in enumerate(ids)}
        for rid in ids:
            handler = queue.put_nowait
            if self.stream_interval > 1:
                handler = every_nth_output(handler, self.stream_interval)
            manager.register_result_handler(rid, handler)
        temperature = p.temperature if p.temperature >= GREEDY_BELOW else GREEDY_TEMPERATURE
        decoders = {rid: Decoder(served.template, p.stop) for rid in ids}
        open_ids = set(ids)
        unwatch = watch_loop(queue, manager)
        try:
            admission = self.admissions.setdefault(served.name, Admission(self.admit_window_s))
            await admission.wait(busy=has_requests(manager))
            # Requests join the batch under the generate() paths' lock: generate() never runs beside a batching step.
            if not self.lock.acquire(blocking=False):
                await asyncio.to_thread(self.lock.acquire)
            try:
                for rid in ids:
                    added = manager.add_request(prompt, request_id=rid, max_new_tokens=p.max_tokens, streaming=True,
                                                eos_token_id=served.template.stop_token_ids,
                                                temperature=float(temperature), top_p=float(p.top_p))
                    if added is None:
                        raise EngineError("the generation loop stopped as this request joined; it restarts for the "
                                          "next one")
            finally:
                self.lock.release()
            while open_ids:
                pending: dict[str, Delta] = {}  # this drain's text per choice, sent as one chunk each
                for out in await queued_outputs(queue, manager):
                    rid = out.request_id
                    if rid not in open_ids:
                        continue
                    if out.error:
                        stopped = "" if running(manager) else "; the generation loop stopped and restarts"
                        raise EngineError(f"{out.error}{stopped}")
                    decoder = decoders[rid]
                    text, stopped = decoder.update(out.generated_tokens, final=out.is_finished())
                    finished = out.is_finished() or stopped
                    if finished:
                        open_ids.discard(rid)
                        if stopped and not out.is_finished():
                            manager.cancel_request(rid)
                    before = pending.get(rid)
                    pending[rid] = Delta(index[rid], (before.text if before else "") + text,
                                         decoder.finish_reason(p.max_tokens) if finished else None,
                                         prompt_tokens=len(prompt), completion_tokens=decoder.count,
                                         stop=decoder.stop_string)
                for delta in pending.values():
                    if delta.text or delta.finish_reason:
                        yield delta
        finally:  # done, cut at a stop string, the client went away or an error: free the batch slots
            unwatch()
            for rid in open_ids:
                manager.cancel_request(rid)
            forget_requests(manager, ids)

    def manager(self, served: Served) -> Any:
        """The served model's batching loop, started on first use, and again when it stopped (a step failed)."""
        with self.start_lock:
            if served.manager is not None and not running(served.manager):
                log.error("the generation loop of %s stopped (%s); starting a new one", served.name,
                          fatal_error(served.manager))
                try:
                    served.manager.stop(block=True, timeout=5)
                except Exception:
                    log.exception("stopping the stopped generation loop of %s", served.name)
                served.manager = None
            if served.manager is None:
                try:
                    served.manager = self._start(served)
                except Exception as err:
                    self.failed[served.name] = f"the generation loop of {served.name} cannot start: {err}"
                    raise EngineError(self.failed[served.name]) from err
                self.failed.pop(served.name, None)
            return served.manager

    def health(self) -> str | None:
        """None when every loop that was started runs (a stopped one is restarted here); else why not."""
        problems = []
        for served in list(self.served.values()):
            if served.manager is not None or served.name in self.failed:
                try:
                    self.manager(served)
                except EngineError as err:
                    problems.append(str(err))
        return "; ".join(problems) or None

    def stop(self, served: Served) -> None:
        self.failed.pop(served.name, None)
        if served.manager is not None:
            served.manager.stop(block=True, timeout=30)
            served.manager = None

    def _start(self, served: Served) -> Any:
        from transformers import ContinuousBatchingConfig, GenerationConfig

        # Sampling mode with both processors present, so each request can set its own temperature/top_p.
        gen = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=256,
                               eos_token_id=served.template.stop_token_ids,
                               pad_token_id=served.template.tokenizer.pad_token_id)
        # Prefix caching (transformers' block sharing, its default) is on: a prompt's full KV blocks stay cached
        # and a later prompt with the same start reuses them. tests/infer/test_prefix_cache.py pins the case that
        # once had it switched off (41fef4d: a greedy answer after a cancelled request; d600b1a found the cause, a
        # generate() call overlapping a batching step).
        self.pick_attention(served.model)
        options = {"per_request_processors": True, **self._cache_budget(served), **graph_option(served.model),
                   **self.options}
        if self.speculate is not None:  # a proposal is made from the last token on the host: no carry-over on the device
            options["use_async_batching"] = False
        cb = ContinuousBatchingConfig(**options)
        manager = served.model.init_continuous_batching(generation_config=gen, continuous_batching_config=cb)
        self._patch(manager, served)
        manager.start()
        # The loop builds its KV cache in its own thread: wait, so a failure there is this call's error.
        deadline = time.monotonic() + 120
        while getattr(manager, "batch_processor", None) is None and running(manager):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if not running(manager):
            raise EngineError(f"{type(fatal_error(manager)).__name__}: {fatal_error(manager)}")
        skip_released_requests(manager.batch_processor.cache)
        return manager

    def _patch(self, manager: Any, served: Served) -> None:
        """Our changes to transformers 5.23's batch processor, made as the loop creates it: greedy steps take the
        argmax, each step's KV read index is built with numpy (infer/read_indices.py), async batching's carry-over
        map without a Python list and only the used part of the index storages copied to the device
        (infer/carry_over.py), decode-only steps' batch tensors and cache checks without per-request calls
        (infer/decode_batch.py), and --speculative ngram verifies proposals in
        the batch (refused at load with another version)."""
        if self.speculate is None and not self.fast_paths:
            return
        if transformers_minor() != SUPPORTED:
            log.info("transformers %s: the continuous batch samples greedy steps too (the argmax patches %s)",
                     transformers_minor(), SUPPORTED)
            return
        counts = self.speculation.setdefault(served.name, SpeculationCounts()) if self.speculate is not None else None

        from tunesmith.infer.decode_batch import install_decode_batch

        def install(processor: Any) -> None:
            if self.fast_paths:  # first: the others wrap the IO method it replaces on decode-only steps
                install_decode_batch(processor)
            greedy = GreedySteps(processor, self.decode_rows)
            greedy.install()
            if self.fast_paths:
                install_carry_over(processor)
                install_used_index_copies(processor)
                if ReadIndices.applies(processor.cache):
                    ReadIndices(processor).install()
            if counts is not None:
                BatchSpeculation(processor, self.speculate, counts, greedy).install()

        patch_batch_processors(manager, install)

    def pick_attention(self, model: Any) -> None:
        """Continuous batching is fastest with a flash attention (no mask, so CUDA graphs). flash-attn, when
        installed, is what transformers picks by itself; otherwise PyTorch's own varlen kernel (infer/attention.py)
        where it applies. The generate() paths keep the model's loading-time attention (SDPA)."""
        from transformers.utils import is_flash_attn_2_available

        from tunesmith.infer import attention

        wanted = self.attention
        if wanted == "auto":
            fits = attention.torch_varlen_available(model.dtype) and not is_flash_attn_2_available()
            wanted = "varlen" if fits else "sdpa"
        if wanted == "varlen":
            attention.use_varlen(model)

    def _cache_budget(self, served: Served) -> dict[str, Any]:
        """transformers sizes the paged KV cache as a share of the device's memory; on CPU that is total RAM, once
        per served model, which starves the machine. Give each manager an explicit share instead."""
        if served.model.device.type == "cpu":
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            return {"max_memory_percent": min(0.5, self.kv_cache_gib * 2**30 / total),
                    "max_batch_tokens": self.max_batch_tokens or 1024}
        # 4096 tokens per step rather than transformers' 8192: prefill comes in smaller chunks between decode steps,
        # which halved time to first token at 64 streams on an H200 (docs/benchmarks.md, "Second round").
        return {"max_memory_percent": 0.8 / len(self.served), "max_batch_tokens": self.max_batch_tokens or 4096}


def skip_released_requests(cache: Any) -> None:
    """transformers 5.23 with async batching (CUDA graphs) and block sharing: a request cancelled while its step is in
    flight has its blocks released when the next batch is prepared, and that step's update then registers the blocks
    it completed through the request's block table, which is gone (KeyError in the loop thread: the loop stops and
    every request in it fails; a client leaving during a long prompt's prefill is enough). Its blocks are released,
    so there is nothing to register: the update skips them. Synchronous batching (CPU) never meets this."""
    mark = cache.mark_complete_blocks

    def mark_held(state: Any, complete_blocks: dict[str, int]) -> None:
        if complete_blocks and all(state.request_id in allocator.block_table
                                   for allocator in cache.cache_allocators.values()):
            mark(state, complete_blocks)

    cache.mark_complete_blocks = mark_held


def running(manager: Any) -> bool:
    """The loop's thread runs and takes requests (a failed step asks it to stop before it fails its requests)."""
    return manager.is_running() and manager.background_thread_status.can_accept_new_requests() is None


def has_requests(manager: Any) -> bool:
    """The batch holds requests (decoding or waiting for their prefill)."""
    processor = getattr(manager, "batch_processor", None)
    return processor is not None and processor.has_pending_requests()


def fatal_error(manager: Any) -> BaseException | None:
    return getattr(manager.background_thread_status, "fatal_error", None)


def cache_tokens(manager: Any) -> int | None:
    """How many tokens of KV cache one request may hold: one that needs more stops the loop ("No requests can be
    scheduled and no requests can be offloaded"). None when transformers does not say."""
    cache = getattr(getattr(manager, "batch_processor", None), "cache", None)
    return getattr(cache, "max_tokens_read", None)


def wait_until_idle(manager: Any, timeout: float = 30.0) -> None:
    """Let the batching loop finish what it holds (a cancelled request runs one more step) before generate() uses
    the same model from another thread; batched requests join only under the same lock, so the two never overlap.
    Measured: with them overlapping, a greedy request right after a stop-string-cancelled stream answered
    differently from its first token (tests/e2e/test_deploy_cli.py; the shared state inside transformers is not
    pinned down)."""
    processor = getattr(manager, "batch_processor", None) if manager is not None else None
    deadline = time.monotonic() + timeout
    while (processor is not None and processor.has_pending_requests() and running(manager)
           and time.monotonic() < deadline):
        time.sleep(0.005)


def every_nth_output(put: Callable[[Any], None], interval: int) -> Callable[[Any], None]:
    """deploy --stream-interval N: a request's outputs are passed on only with its first token, every N tokens after
    that, at its end and with an error. Each output holds every token generated so far, so the ones passed over lose
    nothing: the answer is the same text, in fewer and longer chunks. What that saves is the event loop's work per
    output (a task wake-up, the decode, an SSE chunk and a socket write), which at 64 streams on a GPU took the GIL
    from the batching thread (docs/benchmarks.md). A stop string is still found, in the next output passed on: the
    answer is cut there as before; the batch then runs up to N-1 tokens more for that request."""
    passed = 0  # tokens in the last output passed on

    def hand_on(out: Any) -> None:
        nonlocal passed
        count = len(out.generated_tokens)
        if passed == 0 or count - passed >= interval or out.error or out.is_finished():
            passed = count
            put(out)

    return hand_on


def forget_requests(manager: Any, request_ids: list[str]) -> None:
    """Drop the result handlers of requests nobody reads any more. transformers drops a handler only when its request
    finishes; one cancelled (cut at a stop string, its client gone) kept its handler and queue for the life of the
    server, and a terminal chat stopped with Ctrl-C had the batching thread call its closed event loop. Outputs made
    before a cancel lands then go to the router's shared queue, which nothing here reads: it is emptied too."""
    router = manager.output_router
    with router._lock:
        for rid in request_ids:
            router.result_handlers.pop(rid, None)
    while True:
        try:
            router.output_queue.get_nowait()
        except queue.Empty:
            return


LOOP_STOPPED = object()  # what a stream's watch puts in its empty queue once the loop has stopped


def watch_loop(queue: asyncio.Queue, manager: Any) -> Any:
    """Every LOOP_POLL_S while a stream is open: a loop that stopped without failing its requests (one joined as the
    loop died) leaves them nothing to wait for, so their queue gets LOOP_STOPPED. One timer per stream, where a
    timeout on every wait cost a timer (wait_for: a task) per token. Returns the function that ends the watch."""
    loop = asyncio.get_running_loop()
    handle = None

    def check() -> None:
        nonlocal handle
        if not running(manager) and queue.empty():
            queue.put_nowait(LOOP_STOPPED)
        else:
            handle = loop.call_later(LOOP_POLL_S, check)

    handle = loop.call_later(LOOP_POLL_S, check)
    return lambda: handle.cancel()


async def queued_outputs(queue: asyncio.Queue, manager: Any) -> list[Any]:
    """Wait for an output, then take every output already queued, in order. Each is decoded as it came (stop strings
    and cancellation act on the first output that shows them), but a stream gets one chunk per drain: when the event
    loop falls behind the decode loop, several tokens travel in one SSE event instead of one event each. A loop that
    stopped without failing this request (watch_loop) is an error, not a wait forever."""
    outputs = [await queue.get()] if queue.empty() else []
    while not queue.empty():
        outputs.append(queue.get_nowait())
    if outputs[0] is LOOP_STOPPED:
        raise EngineError(f"the generation loop stopped ({fatal_error(manager)}); it restarts for the next request")
    return outputs


def graph_option(model: Any) -> dict[str, Any]:
    """CUDA graphs off for weights whose activations are quantized at run time (compressed-tensors FP8_DYNAMIC, W8A8):
    their per-token scale is computed with a host-side step that CUDA graph capture refuses ("Cannot copy between CPU
    and CUDA tensors during CUDA graph capture"), which stopped the batching loop at start-up. Weight-only schemes
    (GPTQ/AWQ W4A16) keep transformers' choice."""
    quant = getattr(model.config, "quantization_config", None)
    quant = quant.to_dict() if hasattr(quant, "to_dict") else quant or {}
    groups = quant.get("config_groups") or {}
    dynamic = any((group.get("input_activations") or {}).get("dynamic") for group in groups.values()
                  if isinstance(group, dict))
    return {"use_cuda_graph": False} if dynamic else {}
