"""Two host costs of each decode step of the transformers engine's continuous batch, cut on the loop's thread.

    install_decode_batch(processor)      # on a batch processor (transformers 5.23), before GreedySteps and ReadIndices

At 64 streams a decode step's GPU work is ~1 ms on an H200 while the loop thread's Python takes ~4 ms, most of it per
request: the scheduler checking that each request's next token fits the cache, and the IO building the step's input
lists one request at a time. Both are cut here for the common case, and left to transformers otherwise.

The cache check (PagedAttentionCache.can_store_request_tokens): transformers asks every allocator how many sectors the
request needs, sums them, compares with the free sectors, then allocates sectors and blocks (none when none are
needed). A request whose block table already holds every block its next tokens fall in needs no sector and no block,
so the answer is True and all of that allocates nothing: only that case is answered here, without the calls.

The batch tensors of a decode step (ContinuousBatchingIOs.prepare_batch_tensors): when every request in the batch adds
one token and gets a new one (a decode-only step), a cache of full-attention layers, no attention mask (flash or the
varlen kernel, as served) and no kernel block table, the step's inputs are the same simple function of each request's
length: its last token, its position, one query row, its write slot in the cache, its whole cache read. They are
computed here in one pass over the requests and a few numpy operations, and written to the same storage, with the
same request-state changes (position offset, temporary token, new-token positions) as transformers' loop over requests;
any other step (prefill, a finished prompt, sliding windows, SDPA's mask) goes through transformers' method.
"""

from __future__ import annotations

from typing import Any

from tunesmith.infer.read_indices import ReadIndices, fill_read_index, host_ios

TEMPORARY_TOKEN = -1  # transformers' TMP_TOKEN_ID: the input of a request whose token is still being computed


def install_decode_batch(processor: Any) -> None:
    """Both shortcuts, where the cache is made of full-attention layers (the only allocator they reproduce)."""
    cache = processor.cache
    if not ReadIndices.applies(cache):
        return
    cache.can_store_request_tokens = fits_without_blocks(cache, cache.can_store_request_tokens)
    for io in host_ios(processor.inputs_and_outputs):
        if io.attention_mask is None:
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
    def __init__(self, io: Any):
        self.io = io
        self.cache = io.cache
        self.layer_type, self.allocator = next(iter(io.cache.cache_allocators.items()))

    def prepared(self, prepare: Any) -> Any:
        def prepare_batch_tensors(requests_in_batch: list[Any], logits_processors: Any, use_decode_fast_path: bool,
                                  num_q_tokens: int, max_kv_read: int, use_padding: bool) -> None:
            io = self.io
            decode_only = (len(self.cache.cache_allocators) == 1 and requests_in_batch
                           and not (use_decode_fast_path and io.block_table.numel() > 0)
                           and all(f.query_length == 1 and f.has_new_token for f in requests_in_batch))
            if not decode_only:
                return prepare(requests_in_batch, logits_processors, use_decode_fast_path, num_q_tokens,
                               max_kv_read, use_padding)
            return self.prepare_decode(requests_in_batch, logits_processors, num_q_tokens, max_kv_read, use_padding)

        return prepare_batch_tensors

    def prepare_decode(self, requests_in_batch: list[Any], logits_processors: Any, num_q_tokens: int,
                       max_kv_read: int, use_padding: bool) -> None:
        """transformers' prepare_batch_tensors for a decode-only step: the same attributes, tensors and state changes."""
        import numpy as np
        import torch

        io, allocator = self.io, self.allocator
        n = len(requests_in_batch)
        io.use_block_table = False
        io.num_q_tokens = num_q_tokens
        io.max_kv_read = max_kv_read
        io.num_request_in_batch = n
        io._reset_static_tensors()
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
        cumulative_q = np.minimum(np.arange(sequences + 1), n)
        cumulative_k = np.zeros(sequences + 1, dtype=np.int64)
        np.cumsum(seqlens_k, out=cumulative_k[1:n + 1])
        cumulative_k[n + 1:] = cumulative_k[n]
        io.input_ids[:n] = torch.tensor(tokens, dtype=torch.int32)
        io.position_ids[:n] = torch.from_numpy(past.astype(np.int32))
        io.cumulative_seqlens_q[:sequences + 1] = torch.from_numpy(cumulative_q.astype(np.int32))
        io.logits_indices[:n] = torch.arange(n, dtype=torch.int32)
        io.cumulative_seqlens_k[self.layer_type][:sequences + 1] = torch.from_numpy(cumulative_k.astype(np.int32))
        io.total_seqlen_k[self.layer_type] = int(cumulative_k[n])
        io.max_length_k[self.layer_type] = int(seqlens_k.max())

        slots = np.asarray(blocks, dtype=np.int64) * allocator.block_physical_stride + past % page
        io.write_index_storage[0, :n] = torch.from_numpy(slots)
        io.true_write_sizes[0] = n
        if max_kv_read != 0:  # transformers leaves the read index empty when the step reads no cache
            fill_read_index(self.cache, io, ids, seqlens_k)
