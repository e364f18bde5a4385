"""Host costs of each decode step of the transformers engine's continuous batch, cut on the loop's thread.

    install_decode_batch(processor)      # on a batch processor (transformers 5.23), before GreedySteps and ReadIndices

At 64 streams a decode step's GPU work is ~1 ms on an H200 while the loop thread's Python takes ~4 ms, most of it per
request: the scheduler's pass over the requests (each one's budgets, a cache check through every allocator, its
future state), the IO building the step's input lists one request at a time, and the batch update. Each is cut here
for the common case (a cache of one group of full-attention layers, every request decoding one token), and left to
transformers otherwise. Every shortcut gives what transformers' code gives (tests/infer/test_host_loop.py compares
them step by step); the classes' docstrings say why.

The cache check (PagedAttentionCache.can_store_request_tokens): transformers asks every allocator how many sectors the
request needs, sums them, compares with the free sectors, then allocates sectors and blocks (none when none are
needed). A request whose block table already holds every block its next tokens fall in needs no sector and no block,
so the answer is True and all of that allocates nothing: only that case is answered here, without the calls.

The schedule (DecodeSchedule), the batch tensors (DecodeBatch: computed in one pass over the requests and numpy, and
written through numpy views of the host storage) and the batch update (DecodeUpdate: the token append inlined).
Measured on the loop thread (2-core CPU, tiny model, 64 streams; bench/engine_decode.py --host-timing, "_decode_batch"
switches this module off): preparing a step 1.16-1.23 -> 0.63-0.66 ms of CPU."""

from __future__ import annotations

from typing import Any

from tunesmith.infer.read_indices import ReadIndices, host_ios, read_rows

TEMPORARY_TOKEN = -1  # transformers' TMP_TOKEN_ID: the input of a request whose token is still being computed


def install_decode_batch(processor: Any) -> None:
    """Both shortcuts, where the cache is made of full-attention layers (the only allocator they reproduce)."""
    cache = processor.cache
    if not ReadIndices.applies(cache) or len(cache.cache_allocators) != 1:
        return
    cache.can_store_request_tokens = fits_without_blocks(cache, cache.can_store_request_tokens)
    processor.update_batch = DecodeUpdate(processor).updated(processor.update_batch)
    if type(processor.scheduler).__name__ in ("FIFOScheduler", "PrefillFirstScheduler"):
        scheduler = processor.scheduler
        scheduler.schedule_batch = DecodeSchedule(scheduler).scheduled(scheduler.schedule_batch)
    for io in host_ios(processor.inputs_and_outputs):
        if io.attention_mask is None and io._bulk_input_tensor.device.type == "cpu":
            io.prepare_batch_tensors = DecodeBatch(io).prepared(io.prepare_batch_tensors)


def fits_without_blocks(cache: Any, can_store: Any) -> Any:
    allocators = list(cache.cache_allocators.values())

    def can_store_request_tokens(state: Any, request_len: int, dry_run: bool = False) -> bool:
        end = state.position_offset + request_len  # state.current_len(): the tokens the request will hold
        for allocator in allocators:
            held = allocator.block_table.get(state.request_id)
            if held is None or len(held) * allocator.tokens_per_page < end:
                return can_store(state, request_len, dry_run)
        return True

    return can_store_request_tokens


class DecodeBatch:
    """The decode-only steps of one host IO (its tensors on the CPU: synchronous batching on a CPU, the host side of
    async batching's IO pairs on a GPU), written through numpy views of its storage: no torch call, so the loop
    thread also keeps the GIL through the preparation (a torch call lets the event loop's thread take it)."""

    def __init__(self, io: Any):
        self.io = io
        self.cache = io.cache
        self.layer_type, self.allocator = next(iter(io.cache.cache_allocators.items()))
        self.bulk = io._bulk_input_tensor.numpy()  # the small inputs, one row each (transformers' own layout)
        self.rows = {name: self.bulk_row(getattr(io, name)) for name in ("input_ids", "position_ids",
                                                                         "cumulative_seqlens_q", "logits_indices")}
        self.rows["cumulative_seqlens_k"] = self.bulk_row(io.cumulative_seqlens_k[self.layer_type])
        self.output_ids = io.output_ids.numpy()
        self.write_index, self.read_index = io.write_index_storage.numpy(), io.read_index_storage.numpy()

    def bulk_row(self, view: Any) -> int:
        bulk = self.io._bulk_input_tensor
        return (view.storage_offset() - bulk.storage_offset()) // bulk.stride(0)

    def prepared(self, prepare: Any) -> Any:
        def prepare_batch_tensors(requests_in_batch: list[Any], logits_processors: Any, use_decode_fast_path: bool,
                                  num_q_tokens: int, max_kv_read: int, use_padding: bool) -> None:
            io = self.io
            decode_only = (requests_in_batch and not (use_decode_fast_path and io.block_table.numel() > 0)
                           and all(f.query_length == 1 and f.has_new_token for f in requests_in_batch))
            if not decode_only:
                return prepare(requests_in_batch, logits_processors, use_decode_fast_path, num_q_tokens,
                               max_kv_read, use_padding)
            return self.prepare_decode(requests_in_batch, logits_processors, num_q_tokens, max_kv_read, use_padding)

        return prepare_batch_tensors

    def reset(self, num_q_tokens: int, max_kv_read: int) -> None:
        """ContinuousBatchingIOs._reset_static_tensors (not a full reset, no block table, no attention mask): the
        parts of the storages this step uses back to zeros and to the allocator's trash rows."""
        io, allocator = self.io, self.allocator
        self.bulk[:io.static_inputs, :num_q_tokens + 1] = 0
        io.max_length_q = 0
        used = min(num_q_tokens, io.max_requests_per_batch)
        self.bulk[self.rows["logits_indices"], :used] = 0
        self.output_ids[:, :used] = 0
        io.max_length_k[self.layer_type] = io.total_seqlen_k[self.layer_type] = 0
        self.write_index[0, :num_q_tokens] = allocator.write_trash_index
        self.read_index[0, :num_q_tokens + max_kv_read] = allocator.read_trash_index

    def prepare_decode(self, requests_in_batch: list[Any], logits_processors: Any, num_q_tokens: int,
                       max_kv_read: int, use_padding: bool) -> None:
        """transformers' prepare_batch_tensors for a decode-only step: the same attributes, tensors and state changes."""
        import numpy as np

        io, allocator, bulk, rows = self.io, self.allocator, self.bulk, self.rows
        n = len(requests_in_batch)
        io.use_block_table = False
        io.num_q_tokens = num_q_tokens
        io.max_kv_read = max_kv_read
        io.num_request_in_batch = n
        self.reset(num_q_tokens, max_kv_read)
        io.true_read_sizes, io.true_write_sizes = [0], [0]
        io.requests_in_batch = list(requests_in_batch)

        tokens, pasts, blocks, ids = [], [], [], []
        page, tables = allocator.tokens_per_page, allocator.block_table
        for future in requests_in_batch:
            state = future.state
            past = state.position_offset
            state.position_offset = past + 1
            tokens.append(state.tokens_to_process[0])
            state.tokens_to_process = [TEMPORARY_TOKEN]
            pasts.append(past)
            blocks.append(tables[state.request_id][past // page])
            ids.append(state.request_id)
        io.req_id_to_new_token_position = dict(zip(ids, range(n)))
        io.max_length_q = 1

        logits_processors.prepare_tensor_args(requests_in_batch=requests_in_batch,
                                              arg_storage=io._bulk_input_tensor[io.static_inputs:])
        io.total_seqlen_q = n

        past = np.asarray(pasts, dtype=np.int64)
        seqlens_k = past + 1
        # padding under CUDA graphs: the cumulative lengths plateau over the fake sequences
        sequences = min(num_q_tokens, io.max_requests_per_batch) if use_padding else n
        bulk[rows["input_ids"], :n] = tokens
        bulk[rows["position_ids"], :n] = past
        bulk[rows["cumulative_seqlens_q"], :sequences + 1] = np.minimum(np.arange(sequences + 1), n)
        bulk[rows["logits_indices"], :n] = np.arange(n)
        cumulative_k = bulk[rows["cumulative_seqlens_k"]]
        cumulative_k[0] = 0
        np.cumsum(seqlens_k, out=cumulative_k[1:n + 1], dtype=cumulative_k.dtype)
        cumulative_k[n + 1:sequences + 1] = cumulative_k[n]
        io.total_seqlen_k[self.layer_type] = int(seqlens_k.sum())
        io.max_length_k[self.layer_type] = int(seqlens_k.max())

        self.write_index[0, :n] = np.asarray(blocks, dtype=np.int64) * allocator.block_physical_stride + past % page
        io.true_write_sizes[0] = n
        if max_kv_read != 0:  # transformers leaves the read index empty when the step reads no cache
            read = read_rows(allocator, ids, seqlens_k)
            self.read_index[0, :read.size] = read
            io.true_read_sizes[0] = read.size


class DecodeSchedule:
    """FIFOScheduler / PrefillFirstScheduler.schedule_batch when every candidate is a decoding request with one token
    to process, and the step's token, request and cache-read budgets hold them all: both schedulers' candidates are
    then the decoding requests in the order they became active, and _process_candidates' loop takes each in turn,
    asks the cache for room (which may allocate a block, or fail: the request waits, starved), and schedules it as it
    is (one token, a new token expected). Here the same loop without the branches that cannot be taken."""

    def __init__(self, scheduler: Any):
        from transformers.generation.continuous_batching.requests import FutureRequestState, RequestStatus

        self.scheduler, self.cache = scheduler, scheduler.cache
        self.future, self.decoding = FutureRequestState, RequestStatus.DECODING
        self.allocator_name, self.allocator = next(iter(scheduler.cache.cache_allocators.items()))

    def scheduled(self, schedule_batch: Any) -> Any:
        def schedule(token_budget: int, cache_budget: int) -> Any:
            candidates = self.candidates(token_budget, cache_budget)
            if candidates is None:
                return schedule_batch(token_budget, cache_budget)
            return self.schedule_decode(candidates, cache_budget)

        return schedule

    def candidates(self, token_budget: int, cache_budget: int) -> list[Any] | None:
        """The decoding requests, if the shortcut applies to this step (None otherwise)."""
        scheduler, cache, decoding = self.scheduler, self.cache, self.decoding
        if scheduler.waiting_requests_order and not scheduler.block_new_requests:
            return None
        states, reads = [], 0
        limit = cache.read_cache_limit
        for state in scheduler.active_requests.values():
            status = state._status
            if status != decoding:
                if status < decoding:  # prefilling: the schedulers order it, splits it
                    return None
                continue  # finished, failed: neither scheduler takes it
            if len(state.tokens_to_process) != 1 or state.num_children:
                return None
            reads += state.position_offset if limit is None else min(state.position_offset, limit)
            states.append(state)
        if not states or len(states) > min(token_budget, scheduler.max_requests_per_batch) or reads > cache_budget:
            return None
        return states

    def schedule_decode(self, candidates: list[Any], cache_budget: int) -> Any:
        scheduler, cache = self.scheduler, self.cache
        scheduled, failed = [], False
        scheduler.starved_requests = []
        fast_path = cache.max_blocks_per_request > 0
        fast_length = cache.max_decode_fast_path_length
        scheduler._try_to_meet_safety_margin()  # frees sectors, evicts cached blocks if needed: as transformers does
        limit, can_store = cache.read_cache_limit, cache.can_store_request_tokens
        sharing, page = cache.use_prefix_sharing, self.allocator.tokens_per_page
        future, read = self.future, 0
        for state in candidates:
            if not can_store(state, 1):
                failed = True
                scheduler.starved_requests.append((state, 1))
                continue
            offset = state.position_offset
            fast_path &= offset < fast_length
            read += offset if limit is None else min(offset, limit)
            # count_new_complete_blocks: the one new token completes the last page when it is its final slot
            complete = {self.allocator_name: 1} if sharing and offset % page == page - 1 else {}
            scheduled.append(future(state, not state.remaining_prefill_tokens, complete, 1))
        scheduler._cleanup_waiting_queue(set())
        if not scheduled and failed:
            return None, fast_path, 0, 0
        return scheduled, fast_path, len(scheduled), read


class DecodeUpdate:
    """ContinuousBatchProcessor.update_batch with RequestState.update_and_check_completion inlined for the common
    case: a decoding request, no timestamps or logprobs recorded, a token that is neither EOS nor its last one. That
    method then appends the token, makes it the next input and reports the request unfinished; any other case calls
    it. The cache's mark_complete_blocks is called only with blocks to mark (it returns at once without), and a step
    with requests to fork goes through transformers' method (the forks are handled there, after the loop)."""

    def __init__(self, processor: Any):
        from transformers.generation.continuous_batching.requests import RequestStatus

        self.processor = processor
        self.status = RequestStatus

    def updated(self, update_batch: Any) -> Any:
        def update() -> None:
            if self.processor.scheduler._requests_to_fork:
                return update_batch()
            return self.update_batch()

        return update

    def update_batch(self) -> None:
        processor, status = self.processor, self.status
        scheduler, cache = processor.scheduler, processor.cache
        finished_or_pending, decoding, prefilling = (status.FINISHED, status.PENDING), status.DECODING, status.PREFILLING
        requests_in_batch, new_tokens, logprobs = processor.inputs_and_outputs.prepare_batch_update()
        index, pending_outputs = 0, []
        for future_state in requests_in_batch:
            state = future_state.state
            if state._status in finished_or_pending:  # finished or offloaded between scheduling and update (async)
                if processor.use_async_batching:
                    index += future_state.has_new_token
                    continue
                raise RuntimeError(f"Tried to update {state.status.name} request {state.request_id} in sync mode.")
            if future_state.has_new_token:
                if not state.generated_tokens:  # prefill just ended
                    state.status = decoding
                token = new_tokens[index]
                logprob = logprobs[index] if logprobs is not None else None
                index += 1
                generated = state.generated_tokens
                if (state._status == decoding and logprob is None and not state.record_timestamps
                        and token not in state._eos_token_ids and len(generated) + 1 < state._new_tokens_limit):
                    generated.append(token)
                    state.tokens_to_process = [token]
                    is_finished = False
                else:
                    is_finished = state.update_and_check_completion(token, logprob)
                if future_state.complete_blocks:
                    cache.mark_complete_blocks(state, future_state.complete_blocks)
                if is_finished:
                    scheduler.finish_request(state.request_id)
                    scheduler.block_new_requests = False
                if state.streaming or state._status == status.FINISHED:
                    pending_outputs.append(state.to_generation_output())
            elif state._status == prefilling:
                cache.mark_complete_blocks(state, future_state.complete_blocks)
        if pending_outputs:
            processor.output_router.deliver_batch(pending_outputs)
