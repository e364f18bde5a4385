"""Two host costs of each step of the transformers engine's asynchronous continuous batch (CUDA graphs on a GPU).

    install_carry_over(processor)          # on a batch processor (transformers 5.23) with async batching
    install_used_index_copies(processor)   # the same

The carry-over map, without a Python list of the batch's token budget:
With async batching (CUDA graphs on a GPU), step N+1 is prepared before step N's tokens reach the host; a request in
both steps gets its input token on the device, from step N's outputs, through a map of max_batch_tokens entries
(-1: nothing to carry). transformers 5.23 builds that map as a Python list of max_batch_tokens (4096 with our
default) and converts it to a tensor at every step: ~0.3 ms on the loop's thread. Here only the carried positions
are set, in a tensor filled with -1: the same map.
"""

from __future__ import annotations

from typing import Any


def carry_over_ids(io: Any) -> Any:
    """ContinuousBatchingAsyncIOs.infer_carry_over_ids: at each request's position in the step being prepared, its
    row in the previous step's outputs."""
    import torch

    following = io.io_pairs[io.current_pair].host_io.req_id_to_new_token_position
    previous = io.io_pairs[1 - io.current_pair].host_io.req_id_to_new_token_position
    positions, rows = [], []
    for row, request_id in enumerate(previous):
        position = following.get(request_id)
        if position is not None:
            positions.append(position)
            rows.append(row)
    ids = torch.full((io.max_batch_tokens,), -1, dtype=torch.int32)
    if positions:
        ids[torch.tensor(positions)] = torch.tensor(rows, dtype=torch.int32)
    return ids


def install_carry_over(processor: Any) -> None:
    io = processor.inputs_and_outputs
    if getattr(io, "io_pairs", None) is not None:  # synchronous batching carries nothing over
        io.infer_carry_over_ids = lambda: carry_over_ids(io)


def install_used_index_copies(processor: Any) -> None:
    """Async batching copies each step's inputs from the host to the device, the KV write and read indices included,
    each as its whole storage: the read index is sized for the whole cache (8M entries, 64 MB, ~1.4 ms per step
    for a 0.5B model with 80 % of an H200 as cache), which the step's compute waits for. The step reads the first
    num_q_tokens write entries and max_kv_read + num_q_tokens read entries (padded sizes under CUDA graphs; the host
    resets what a step leaves as the cache's trash rows), so only those are copied: the storages are narrowed to
    them around transformers' own transfer."""
    io = processor.inputs_and_outputs
    for pair in getattr(io, "io_pairs", None) or ():
        host = pair.host_io
        if host.read_index_storage.shape[0] == 1:  # one attention type: a row's start is contiguous, copied async
            host._transfer_inputs = used_index_copies(host, host._transfer_inputs)


def used_index_copies(host: Any, transfer: Any) -> Any:
    def transfer_inputs(other: Any, *args: Any, **kwargs: Any) -> None:
        q, kv = host.num_q_tokens, host.max_kv_read + host.num_q_tokens
        full = host.write_index_storage, host.read_index_storage, other.write_index_storage, other.read_index_storage
        host.write_index_storage, host.read_index_storage = full[0][:, :q], full[1][:, :kv]
        other.write_index_storage, other.read_index_storage = full[2][:, :q], full[3][:, :kv]
        try:
            transfer(other, *args, **kwargs)
        finally:
            host.write_index_storage, host.read_index_storage, other.write_index_storage, other.read_index_storage = full

    return transfer_inputs
