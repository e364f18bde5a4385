"""The KV cache read index of each step of the transformers engine's continuous batch, built with numpy.

    ReadIndices(processor).install()     # on a batch processor (transformers 5.23), before its first step

Without a block-table kernel (flash-attn's flash_attn_with_kvcache; torch's varlen kernel and SDPA have none), every
step reads each request's whole KV cache through a flat index of cache rows: prompt plus answer so far, for every
request in the batch (64 streams of ~470 tokens: ~30k entries per step). transformers 5.23 builds it as a Python list,
one `range` per 256-token page per request, then turns the list into a tensor: ~1.4 ms per step at 64 streams on a
2-core CPU (bench/engine_decode.py --host-timing), on the generation loop's thread, where the GPU waits for it.

Here the cache's `extend_read_and_write_indices` builds the write indices as before (one per new token) and only
notes each request's length; once transformers has prepared the step, the read index is computed from the requests'
block tables in a few numpy operations and copied into the IO's index storage, where transformers would have put it
(same entries, same order: request after request, page after page). Only for caches made of full-attention layers (the
index transformers computes for sliding windows differs); another cache is left as it is.
"""

from __future__ import annotations

from typing import Any


def host_ios(io: Any) -> list[Any]:
    """The IO objects whose tensors are prepared on the host: the one synchronous IO, or the host side of both async
    IO pairs."""
    pairs = getattr(io, "io_pairs", None)
    return [pair.host_io for pair in pairs] if pairs is not None else [io]


class ReadIndices:
    def __init__(self, processor: Any):
        self.cache = processor.cache
        self.io = processor.inputs_and_outputs
        self.lengths: list[tuple[str, int]] = []  # the step's requests reading the cache: (request id, tokens read)

    @staticmethod
    def applies(cache: Any) -> bool:
        from transformers.generation.continuous_batching.cache_allocators.full_attention import (
            FullAttentionCacheAllocator,
        )

        return all(type(allocator) is FullAttentionCacheAllocator for allocator in cache.cache_allocators.values())

    def install(self) -> None:
        cache = self.cache
        self.extend, cache.extend_read_and_write_indices = cache.extend_read_and_write_indices, self._extend
        for io in host_ios(self.io):
            io.prepare_batch_tensors = self._prepared(io, io.prepare_batch_tensors)

    def _extend(self, request_id: str, past_length: int, query_length: int, read_index: list | None,
                write_index: list[list[int]]) -> None:
        self.extend(request_id, past_length, query_length, None, write_index)
        if read_index is not None:  # None: the step reads no cache (transformers leaves the read index empty)
            self.lengths.append((request_id, past_length + query_length))

    def _prepared(self, io: Any, prepare: Any) -> Any:
        def prepare_batch_tensors(*args: Any, **kwargs: Any) -> None:
            self.lengths = []
            prepare(*args, **kwargs)
            if self.lengths:
                self.fill(io)

        return prepare_batch_tensors

    def fill(self, io: Any) -> None:
        """FullAttentionCacheAllocator.get_read_indices of every request, concatenated, into io's storage."""
        import torch

        request_ids = [request_id for request_id, _ in self.lengths]
        lengths = [n for _, n in self.lengths]
        for i, allocator in enumerate(self.cache.cache_allocators.values()):
            rows = read_rows(allocator, request_ids, lengths)
            io.read_index_storage[i, :rows.size].copy_(torch.from_numpy(rows))
            io.true_read_sizes[i] = rows.size


def read_rows(allocator: Any, request_ids: list[str], lengths: Any) -> Any:
    """The cache rows each request reads (its first `length` tokens, page after page), concatenated: a numpy array.
    Also used by infer/decode_batch.py."""
    import numpy as np

    lengths = np.asarray(lengths, dtype=np.int64)
    page, tables = allocator.tokens_per_page, allocator.block_table
    pages = (lengths + page - 1) // page  # pages each request reads, the last one maybe partly
    blocks: list[int] = []
    for request_id, n in zip(request_ids, pages.tolist()):
        blocks.extend(tables[request_id][:n])
    counts = np.full(len(blocks), page, dtype=np.int64)  # rows read per page
    counts[np.cumsum(pages) - 1] = lengths - (pages - 1) * page
    starts = np.asarray(blocks, dtype=np.int64) * allocator.block_physical_stride
    total = int(lengths.sum())
    return np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(total, dtype=np.int64)
