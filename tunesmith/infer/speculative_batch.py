"""--speculative ngram[:N] inside the transformers engine's continuous batch: prompt lookup proposals verified in the
batch's own forward pass, next to the other requests' decode steps and prefill chunks.

    counts = SpeculationCounts()
    BatchSpeculation(processor, tokens=10, counts=counts, greedy=greedy_steps).install()   # before its first step

Each step, before the scheduler runs, every decoding greedy request (temperature under GREEDY_BELOW) looks up the
last 4..1 tokens of its prompt + answer at their first earlier occurrence and proposes up to N tokens that followed
it (host side: a dict of n-grams per request, grown by the new tokens only). Its query becomes its last token plus
the proposals; the batch is ragged already (prefill chunks beside one-token decodes), so it goes through the same
forward. The logits are taken at every position of such a request; the longest prefix of proposals equal to the
model's own next tokens is accepted, plus the model's token after it. The rejected positions' KV slots are left
behind: the request's position_offset goes back and the next step rewrites them. EOS and max_tokens cut an accepted
run exactly where one-token decoding would stop. Sampling requests never speculate; they keep one token per step
in the same batch.

transformers 5.23 has no speculation in continuous batching; this patches five of its internals on one batch
processor (the scheduler's step and request scheduling; the IO's batch tensors, model kwargs and batch update), over
infer/greedy_steps.py's argmax on greedy steps (its graph key and forward), refusing any other transformers minor
version (infer/continuous.py installs both as the loop creates its batch processor). Choices it makes:
- Synchronous batching: async batching carries the previous step's token over on the device, and a proposal needs
  the token on the host. use_async_batching is off for a speculating loop (the CUDA graphs stay).
- Prefix caching stays on: after a step only the blocks filled by tokens now in the cache (the input token and the
  accepted proposals) are registered for sharing, never a block completed by a rejected proposal.
- With CUDA graphs the varlen path takes logits at min(padded query tokens, max_requests_per_batch) rows already;
  the proposals of one step are capped so that their rows fit there (and in the logits index storage on CPU).
- A step of greedy requests only takes the argmax of each row, every proposal's row too (infer/greedy_steps.py); a
  step with a sampling request keeps transformers' processors and sampling for all its rows, its per-request
  arguments repeated once per row. Proposals stop one token short of max_tokens.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from tunesmith.errors import TunesmithError
from tunesmith.infer.decoding import GREEDY_BELOW
from tunesmith.infer.greedy_steps import (
    SUPPORTED,
    GreedySteps,
    transformers_minor,
    transformers_version,
)

NGRAM_MIN, NGRAM_MAX = 1, 4  # n-gram sizes matched (vLLM's prompt_lookup_min/max, as the vLLM backend uses)
LOOKUP, PROPOSED = "_tunesmith_lookup", "_tunesmith_proposed"  # attributes set on transformers' RequestState


@dataclass
class SpeculationCounts:
    """Per served model: verification steps (one request's step that carried proposals), tokens proposed, tokens
    accepted. Read by /metrics."""

    steps: int = 0
    proposed: int = 0
    accepted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, proposed: int, accepted: int) -> None:
        with self.lock:
            self.steps += 1
            self.proposed += proposed
            self.accepted += accepted


class Lookup:
    """One request's tokens (prompt + answer) and, per n-gram of them, the position after its first occurrence (as
    transformers' prompt lookup: the longest continuation, and in a copying answer the source)."""

    __slots__ = ("after", "tokens")

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.after: dict[tuple[int, ...], int] = {}

    def extend(self, tokens: list[int]) -> None:
        seq, after = self.tokens, self.after
        for t in tokens:
            j = len(seq)  # the n-grams ending just before t are followed by t
            for n in range(NGRAM_MIN, min(NGRAM_MAX, j) + 1):
                after.setdefault(tuple(seq[j - n:j]), j)
            seq.append(t)

    def propose(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the first occurrence of the longest suffix seen before."""
        seq = self.tokens
        for n in range(min(NGRAM_MAX, len(seq)), NGRAM_MIN - 1, -1):
            j = self.after.get(tuple(seq[-n:]))
            if j is not None:
                return seq[j:j + limit]
        return []


def check_version() -> None:
    if transformers_minor() != SUPPORTED:
        raise TunesmithError(f"--speculative ngram inside the continuous batch patches transformers {SUPPORTED}'s "
                             f"continuous batching; transformers {transformers_version()} is installed. Install "
                             f"transformers=={SUPPORTED}.* or use --speculative draft=MODEL")


class BatchSpeculation:
    """Prompt lookup on one batch processor, whose greedy steps `greedy` (installed first) turns into argmaxes."""

    def __init__(self, processor: Any, tokens: int, counts: SpeculationCounts, greedy: GreedySteps):
        from transformers.generation.continuous_batching.input_outputs import (
            ContinuousBatchingIOs,
        )

        if type(processor.inputs_and_outputs) is not ContinuousBatchingIOs:
            raise TunesmithError("--speculative ngram needs synchronous batching (use_async_batching off): a proposal "
                                 "is made from the last token on the host")
        self.processor, self.tokens, self.counts, self.greedy = processor, tokens, counts, greedy
        self.io, self.scheduler, self.cache = processor.inputs_and_outputs, processor.scheduler, processor.cache
        # logits rows one step may hold: the CUDA-graph slice (min(padded q, max_requests_per_batch)) and the
        # logits index storage (max_requests_per_batch long) both hold this many
        self.max_logits = min(processor.cb_config.max_requests_per_batch, self.cache.max_batch_tokens)
        self.batch: list[tuple[Any, list[int] | None]] = []  # the prepared step: (future state, its proposals)
        self.logits: int | None = None  # logits rows of the prepared step
        self.accepting = False

    def install(self) -> None:
        from transformers.generation.continuous_batching.requests import RequestStatus

        self.decoding = RequestStatus.DECODING
        scheduler, io, processor = self.scheduler, self.io, self.processor
        self.schedule_batch, scheduler.schedule_batch = scheduler.schedule_batch, self._schedule_batch
        self.schedule_request, scheduler._schedule_request = scheduler._schedule_request, self._schedule_request
        self.prepare, io.prepare_batch_tensors = io.prepare_batch_tensors, self._prepare_batch_tensors
        self.model_kwargs, io.get_model_kwargs = io.get_model_kwargs, self._get_model_kwargs
        self.batch_update, io.prepare_batch_update = io.prepare_batch_update, self._prepare_batch_update
        self.update, processor.update_batch = processor.update_batch, self._update_batch

    # -- proposals, before the scheduler sees the requests

    def _schedule_batch(self, token_budget: int, cache_budget: int) -> Any:
        self.propose()
        return self.schedule_batch(token_budget, cache_budget)

    def propose(self) -> None:
        if not self.tokens:  # 0: greedy steps take the argmax, nothing is proposed (bench/engine_decode.py's baseline)
            return
        scheduler = self.scheduler
        room = self.max_logits - len(scheduler.active_requests) - len(scheduler.waiting_requests)
        for state in scheduler.active_requests.values():
            state.__dict__.pop(PROPOSED, None)
            if state.status != self.decoding or not state.generated_tokens:
                continue
            if state.logit_processor_kwargs.get("temperature", 1.0) >= GREEDY_BELOW:
                continue  # a sampling request: one token per step
            lookup = state.__dict__.get(LOOKUP)
            if lookup is None:
                lookup = state.__dict__[LOOKUP] = Lookup()
                lookup.extend(state.initial_tokens)
            lookup.extend(state.generated_tokens[len(lookup.tokens) - len(state.initial_tokens):])
            limit = min(self.tokens, room, state._new_tokens_limit - state.generated_len() - 1)
            proposals = lookup.propose(limit) if limit > 0 else []
            state.tokens_to_process = [state.generated_tokens[-1], *proposals]
            state.__dict__[PROPOSED] = proposals
            room -= len(proposals)

    def _schedule_request(self, state: Any, request_tokens: list[int], token_budget: int, *args: Any,
                          **kwargs: Any) -> Any:
        """A decoding request whose proposals exceed the step's token budget drops the ones that do not fit (the
        scheduler would split it like a prompt)."""
        if state.status == self.decoding and len(request_tokens) > token_budget:
            request_tokens = state.tokens_to_process = request_tokens[:token_budget]
            if PROPOSED in state.__dict__:
                state.__dict__[PROPOSED] = request_tokens[1:]
        return self.schedule_request(state, request_tokens, token_budget, *args, **kwargs)

    # -- the batch tensors: logits at every proposal's position

    def _prepare_batch_tensors(self, requests_in_batch: list[Any], logits_processors: Any, *args: Any,
                               **kwargs: Any) -> None:
        import torch

        self.batch = []
        for future in requests_in_batch:
            proposed = future.state.__dict__.get(PROPOSED) if future.has_new_token else None
            if proposed is not None:
                proposed = proposed[:future.query_length - 1]
            self.batch.append((future, proposed or None))
        self.prepare(requests_in_batch, logits_processors, *args, **kwargs)
        io = self.io
        rows, indices, end = [], [], 0
        for future, proposed in self.batch:
            end += future.query_length
            if future.has_new_token:
                n = 1 + len(proposed or ())
                rows.append(n)
                indices.extend(range(end - n, end))
        self.logits = len(indices)
        if len(indices) > len(rows):  # proposals: their rows too (else one row per request, as the batch has it)
            io.logits_indices[:len(indices)] = torch.tensor(indices, dtype=torch.int32, device=io.device)
            if logits_processors.tensors_required and not self.greedy.greedy_step:  # temperature/top_p per row
                storage = io._bulk_input_tensor[io.static_inputs:]
                per_request = storage[:, :len(rows)].clone()
                repeats = torch.tensor(rows, device=storage.device)
                storage[:, :len(indices)] = per_request.repeat_interleave(repeats, dim=1)
        if io.compute_stream is not None:  # the batch's tensors are written on this stream, read on the compute one
            io.compute_stream.wait_stream(torch.get_device_module(io.device).current_stream(io.device))

    def _get_model_kwargs(self, use_padding: bool = False) -> Any:
        kwargs = self.model_kwargs(use_padding=use_padding)
        io, n = self.io, self.logits
        if n is not None and not use_padding and n != kwargs["logits_indices"].numel():
            kwargs["logits_indices"] = io.logits_indices[:n]
            kwargs["logits_processor_args"] = io._bulk_input_tensor[io.static_inputs:, :n]
        return kwargs

    # -- acceptance, in the batch update

    def _update_batch(self) -> None:
        self.accepting = True
        try:
            self.update()
        finally:
            self.accepting = False
            for future, _ in self.batch:
                future.state.__dict__.pop(PROPOSED, None)
            self.batch, self.logits = [], None

    def _prepare_batch_update(self) -> tuple[list[Any], list[int], list[float] | None]:
        requests, new_tokens, logprobs = self.batch_update()
        if not self.accepting or not any(proposed for _, proposed in self.batch):
            return requests, new_tokens, logprobs
        io, n = self.io, self.logits
        tokens = io.output_ids[0, :n].tolist()
        import torch

        row_logprobs = io.output_ids[1, :n].view(dtype=torch.float32).tolist() if io.return_logprobs else None
        kept, kept_logprobs, i = [], [], 0
        for future, proposed in self.batch:
            if not future.has_new_token:
                continue
            width = 1 + len(proposed or ())
            lps = row_logprobs[i:i + width] if row_logprobs is not None else [None] * width
            if proposed:
                token, lp = self.accept(future, proposed, tokens[i:i + width], lps)
            else:
                token, lp = tokens[i], lps[0]
            kept.append(token)
            kept_logprobs.append(lp)
            i += width
        return requests, kept, kept_logprobs if row_logprobs is not None else None

    def accept(self, future: Any, proposed: list[int], outputs: list[int], logprobs: list) -> tuple[int, Any]:
        """Apply the accepted run but its last token, which the batch update appends (and checks for the end) as
        it does any step's token. Returns that token: where EOS or max_tokens falls inside the run, the one there."""
        state = future.state
        m = 1
        while m <= len(proposed) and proposed[m - 1] == outputs[m - 1]:
            m += 1
        # The cache holds the input token and the m - 1 accepted proposals; the rejected ones' slots come next and
        # are rewritten by the next step.
        state.position_offset -= len(proposed) - (m - 1)
        future.complete_blocks = self.complete_blocks(state.position_offset - m, m)
        self.counts.add(len(proposed), m - 1)
        for j in range(m - 1):
            token = outputs[j]
            if token in state._eos_token_ids or state.generated_len() + 1 >= state._new_tokens_limit:
                return token, logprobs[j]
            state.update_and_check_completion(token, logprobs[j])
        return outputs[m - 1], logprobs[m - 1]

    def complete_blocks(self, past: int, written: int) -> dict[str, int]:
        """The blocks completed by the `written` valid tokens after `past` (PagedAttentionCache
        .count_new_complete_blocks over the accepted tokens only): never one that holds a rejected proposal."""
        if not self.cache.use_prefix_sharing:
            return {}
        blocks = {}
        for name, allocator in self.cache.cache_allocators.items():
            complete = (past % allocator.tokens_per_page + written) // allocator.tokens_per_page
            if complete:
                blocks[name] = complete
        return blocks
