"""The carry-over map of each step of the transformers engine's asynchronous continuous batch, without a Python list
of the batch's token budget.

    install_carry_over(processor)     # on a batch processor (transformers 5.23) with async batching

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
