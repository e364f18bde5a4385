"""The transformers engine's generate() paths: requests the batching loop cannot serve, answered by `generate()` one
at a time under the engine's lock (the batching loop never steps beside them: infer/continuous.py).

- exact: `logprobs` / `top_logprobs` report the model's own distribution (the answer comes whole); a `seed` reseeds
  per request, streamed token by token (generate_streamed).
- constrained: a `response_format` grammar (infer/grammar.py, llguidance) masks the logits of each step through a
  LogitsProcessor, streamed token by token. The batching loop's per-request processors take only tensor arguments
  (temperature, top_p), so a grammar cannot ride in the batch.
- vision: a VLM's prompt and pictures, encoded by encode_vision_prompt (the renderer training uses); the batching
  loop takes token ids only, not pixels. Tools, response_format, logprobs and prefills are refused for them by name.

Streamed paths run generate() in a worker thread per choice (stream_threaded); a client that goes away or a stop
string ends it at its next step.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator, Callable

from tunesmith.errors import TunesmithError
from tunesmith.infer.common import prompt_ids
from tunesmith.infer.continuous import wait_until_idle
from tunesmith.infer.decoding import GREEDY_BELOW, Decoder, TokenStream, token_bytes
from tunesmith.infer.served_models import Served
from tunesmith.infer.types import Delta, EngineError, GenerationRequest, SamplingParams, TokenLogprob


def sampling(p: SamplingParams) -> dict[str, Any]:
    """generate()'s sampling arguments for a request: greedy under GREEDY_BELOW."""
    sample = p.temperature >= GREEDY_BELOW
    return {"do_sample": sample, "temperature": p.temperature if sample else None,
            "top_p": p.top_p if sample else None, "top_k": None}


def reseed(p: SamplingParams, choice: int) -> None:
    import torch

    if p.seed is not None:
        torch.manual_seed((p.seed + choice) % 2**64)  # any int64 seed; torch takes [0, 2**64)


async def stream_threaded(served: Served, p: SamplingParams, prompt_tokens: int, what: str,
                          generate: Callable[[int, TokenStream], None]) -> AsyncIterator[Delta]:
    """The n choices of a generate() run in a worker thread one after another (`generate(choice, streamer)`),
    their tokens decoded and streamed as they come."""
    loop = asyncio.get_running_loop()
    for i in range(p.n):
        queue: asyncio.Queue = asyncio.Queue()
        streamer = TokenStream(loop, queue)
        decoder = Decoder(served.template, p.stop)
        work = asyncio.ensure_future(asyncio.to_thread(generate, i, streamer))
        tokens: list[int] = []
        before_stop = ""  # the text the step that reached a stop string brought ahead of it: the answer's last piece
        try:
            while (item := await queue.get()) is not None:
                tokens += item
                text, stopped = decoder.update(tokens)
                if stopped:
                    streamer.cancelled = True  # a stop string: generate() ends at its next step
                    before_stop = text
                    break
                if text:
                    yield Delta(i, text, prompt_tokens=prompt_tokens, completion_tokens=decoder.count)
            try:
                await work
            except Exception as err:
                raise EngineError(f"{what} failed: {type(err).__name__}: {err}") from err
            text, _ = decoder.update(tokens, final=True)
            yield Delta(i, before_stop + text, decoder.finish_reason(p.max_tokens), prompt_tokens=prompt_tokens,
                        completion_tokens=decoder.count, stop=decoder.stop_string)
        finally:  # the client went away: stop generating (the thread ends at its next step)
            streamer.cancelled = True
            if not work.done():
                await asyncio.wait([work])


def generate_streamed(served: Served, lock: threading.Lock, inputs: dict[str, Any], p: SamplingParams, choice: int,
                      streamer: TokenStream, **options: Any) -> None:
    """One choice of generate() into `streamer`, under `lock` once the batching loop is idle; `options` go to
    generate() (logits_processor, assistant_model, ...)."""
    import torch
    from transformers import StoppingCriteriaList

    device = served.model.device
    with lock, torch.inference_mode():
        wait_until_idle(served.manager)
        reseed(p, choice)
        try:
            served.model.generate(
                **{k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()},
                max_new_tokens=p.max_tokens, **sampling(p), eos_token_id=served.template.stop_token_ids,
                pad_token_id=served.template.tokenizer.pad_token_id, streamer=streamer,
                stopping_criteria=StoppingCriteriaList([streamer.stop]), **options)
        finally:
            streamer.end()


def token_inputs(prompt: list[int]) -> dict[str, Any]:
    import torch

    return {"input_ids": torch.tensor([prompt]), "attention_mask": torch.ones(1, len(prompt), dtype=torch.long)}


# -----------------------------------------------------------------------------
# Exact path: logprobs and seeds


async def stream_exact(served: Served, lock: threading.Lock, prompt: list[int],
                       p: SamplingParams) -> AsyncIterator[Delta]:
    for i in range(p.n):
        left = threading.Event()
        try:
            tokens, logprobs = await asyncio.to_thread(generate_exact, served, lock, prompt, p, i, left)
        except asyncio.CancelledError:
            # the client left: end generate() at its next step. It holds the engine's lock and pauses the batch, so
            # running on to max_tokens would keep every other request waiting for an answer nobody reads
            left.set()
            raise
        except Exception as err:  # this request's failure only: nothing else runs on this path
            raise EngineError(f"generate() failed: {type(err).__name__}: {err}") from err
        decoder = Decoder(served.template, p.stop)
        text, _ = decoder.update(tokens, final=True)
        kept = logprobs[: decoder.count] if p.logprobs or p.top_logprobs else []
        yield Delta(i, text, decoder.finish_reason(p.max_tokens), kept, len(prompt), decoder.count,
                    stop=decoder.stop_string)


def generate_exact(served: Served, lock: threading.Lock, prompt: list[int], p: SamplingParams, choice: int,
                   left: threading.Event | None = None):
    """One choice through generate() with the model's distribution at each step; `left`, once set, ends generate()
    at its next step (the caller went away)."""
    import torch
    from transformers import StoppingCriteriaList

    left = left or threading.Event()

    def caller_left(input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        return torch.full((input_ids.shape[0],), left.is_set(), dtype=torch.bool, device=input_ids.device)

    tok = served.template.tokenizer
    ids = torch.tensor([prompt], device=served.model.device)
    with lock, torch.inference_mode():
        wait_until_idle(served.manager)
        reseed(p, choice)
        out = served.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=p.max_tokens, **sampling(p),
            eos_token_id=served.template.stop_token_ids, pad_token_id=tok.pad_token_id,
            output_scores=True, output_logits=True, return_dict_in_generate=True,
            stopping_criteria=StoppingCriteriaList([caller_left]))
    if left.is_set():  # nobody reads the answer
        return [], []
    new = out.sequences[0, len(prompt):].tolist()
    raw = token_bytes(tok)
    logprobs = []
    for step, token in enumerate(new):
        dist = torch.log_softmax(out.logits[step][0].float(), dim=-1)
        top = torch.topk(dist, max(p.top_logprobs, 1))
        top_ids = top.indices.tolist()[: p.top_logprobs]
        tops = [(tok.decode([t]), v) for v, t in zip(top.values.tolist(), top_ids)]
        logprobs.append(TokenLogprob(tok.decode([token]), dist[token].item(), tops, raw(token),
                                     [raw(t) for t in top_ids]))
    return new, logprobs


# -----------------------------------------------------------------------------
# Constrained path: a grammar on generate(), token by token


async def stream_constrained(served: Served, lock: threading.Lock, prompt: list[int], p: SamplingParams,
                             grammar: str) -> AsyncIterator[Delta]:
    from transformers import LogitsProcessorList

    from tunesmith.infer.grammar import GrammarProcessor

    def generate(choice: int, streamer: TokenStream) -> None:
        processor = GrammarProcessor(grammar, served.template, served.model.config.vocab_size)
        generate_streamed(served, lock, token_inputs(prompt), p, choice, streamer,
                          logits_processor=LogitsProcessorList([processor]))

    async for delta in stream_threaded(served, p, len(prompt), "constrained generate()", generate):
        yield delta


# -----------------------------------------------------------------------------
# Vision-language models: generate() with the pictures, one request at a time


def vision_inputs(served: Served, request: GenerationRequest) -> dict[str, Any]:
    """input_ids, attention_mask and the pictures' tensors (batch 1), encoded as training encodes the prompt."""
    from tunesmith.models.vision import encode_vision_prompt

    for what, given in (("tools", request.tools), ("response_format", request.response_format),
                        ("an assistant prefix", request.assistant_prefix),
                        ("chat_template_kwargs in the request", request.chat_template_kwargs)):
        if given:
            raise TunesmithError(f"{what}: not served for vision-language models yet; leave it out")
    if request.messages is None:  # a plain completion: its text, no pictures
        return token_inputs(prompt_ids(served.template, request))
    return encode_vision_prompt(served.processor, request.messages, list(request.images or []))


async def stream_vision(served: Served, lock: threading.Lock, request: GenerationRequest) -> AsyncIterator[Delta]:
    p = request.params
    if p.logprobs or p.top_logprobs:
        raise TunesmithError("logprobs: not served for vision-language models yet; leave it out")
    inputs = request.encoded  # set by prompt_ids(), which the server calls first; else encoded here, off the loop
    if inputs is None:
        inputs = await asyncio.to_thread(vision_inputs, served, request)
    async for delta in stream_threaded(served, p, int(inputs["input_ids"].shape[1]), "generate()",
                                       lambda i, streamer: generate_streamed(served, lock, inputs, p, i, streamer)):
        yield delta


# -----------------------------------------------------------------------------
# Speculative decoding: assisted generate() (infer/speculative.py), one request at a time


async def stream_assisted(served: Served, lock: threading.Lock, prompt: list[int], p: SamplingParams,
                          options: dict[str, Any], on_step: Callable[[int], None]) -> AsyncIterator[Delta]:
    """`on_step(tokens)` hears each verification step: generate()'s streamer gets one put per step."""

    def generate(choice: int, streamer: TokenStream) -> None:
        streamer.on_step = on_step
        generate_streamed(served, lock, token_inputs(prompt), p, choice, streamer, **options)

    async for delta in stream_threaded(served, p, len(prompt), "assisted generate()", generate):
        yield delta
