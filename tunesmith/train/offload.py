"""Offloaded gradient checkpointing (`gradient_checkpointing: offload`): each checkpointed decoder layer's input, the
one activation checkpointing keeps per layer, waits in pinned host memory instead of on the GPU.

    trainer callbacks += [OffloadCheckpointInputs()]     # train/setup.py, when the config asks and the device is CUDA

Checkpointing keeps layers x tokens x hidden x 2 bytes on the GPU (1 GiB for an 8B model at 4,096 tokens); offloaded,
two layers' worth stay (the one in backward and the next one arriving). Unsloth's default checkpointing does the same;
Axolotl calls it `gradient_checkpointing: offload`.

Why not transformers' own `offload=True` (5.23): it wraps the checkpoint in `torch.autograd.graph.save_on_cpu`, whose
copy to the host is synchronous, so the host waits for the GPU at every layer and stops queueing kernels ahead of it,
and whose copy back runs on the compute stream when backward needs it. Here both copies run on a side stream: the
copy out overlaps the next layers' forward, and the copy back of layer i-1's input overlaps layer i's backward.

What is packed: torch's non-reentrant checkpoint saves the checkpointed function's positional inputs through
`saved_tensors_hooks` (the hidden states; transformers passes everything else as keyword arguments bound in a
partial), and only those pass through the hooks installed around `checkpoint(...)`; the layer's own saved tensors go
through the checkpoint's inner hooks, which take precedence.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

from transformers import TrainerCallback

# Smaller tensors (positions, a batch-of-one decode) cost more in copy launches than they free.
MIN_OFFLOAD_BYTES = 1 << 20


class _Offloaded:
    """One saved tensor in host memory, and its way back."""

    def __init__(self, host: Any, written: Any, device: Any) -> None:
        self.host, self.written, self.device = host, written, device
        self.back: Any = None    # the device copy, once fetched
        self.arrived: Any = None  # event after the copy back


class ActivationOffload:
    """saved_tensors_hooks that move large CUDA tensors to pinned host memory on a side stream, and bring them back one
    layer ahead of backward (backward unpacks in the reverse order of the forward's packs)."""

    def __init__(self) -> None:
        self._stream: Any = None  # made at the first CUDA tensor: a CPU run passes every tensor through untouched
        self.order: list[weakref.ref[_Offloaded]] = []  # forward order; the autograd graph owns the entries

    @property
    def stream(self) -> Any:
        import torch

        if self._stream is None:
            self._stream = torch.cuda.Stream()
        return self._stream

    def pack(self, tensor: Any) -> Any:
        import torch

        if not tensor.is_cuda or tensor.numel() * tensor.element_size() < MIN_OFFLOAD_BYTES:
            return tensor
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        self.stream.wait_stream(torch.cuda.current_stream())  # the tensor is written by the kernels queued so far
        with torch.cuda.stream(self.stream):
            host.copy_(tensor, non_blocking=True)
            written = torch.cuda.Event()
            written.record()
        tensor.record_stream(self.stream)  # its memory is not handed out again before the copy has read it
        item = _Offloaded(host, written, tensor.device)
        self.order = [ref for ref in self.order if ref() is not None]  # a graph freed without backward leaves none
        self.order.append(weakref.ref(item))
        return item

    def unpack(self, item: Any) -> Any:
        import torch

        if not isinstance(item, _Offloaded):
            return item
        self._fetch(item)
        self._prefetch_before(item)
        compute = torch.cuda.current_stream()
        compute.wait_event(item.arrived)
        tensor, item.back = item.back, None  # the host copy stays while the graph holds the item (retain_graph)
        tensor.record_stream(compute)  # allocated on the side stream, read on this one
        return tensor

    def _fetch(self, item: _Offloaded) -> None:
        import torch

        if item.back is not None:
            return
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(item.written)
            item.back = item.host.to(item.device, non_blocking=True)
            item.arrived = torch.cuda.Event()
            item.arrived.record()

    def _prefetch_before(self, item: _Offloaded) -> None:
        """Start bringing back the tensor packed just before this one: the layer whose backward comes next."""
        alive = [i for i in (ref() for ref in self.order) if i is not None]
        position = next((k for k, i in enumerate(alive) if i is item), 0)
        self.order = [weakref.ref(i) for i in alive if i is not item]
        if position:  # the ones before it in the forward are still waiting for their backward
            self._fetch(alive[position - 1])

    def checkpoint(self, checkpoint_func: Any, function: Any, *args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
            return checkpoint_func(function, *args, **kwargs)


def offload_checkpoint_inputs(model: Any) -> int:
    """Wrap the checkpoint function transformers set on each checkpointed module; returns how many were wrapped.
    Idempotent (a resumed or second `train()` finds them wrapped)."""
    offload = ActivationOffload()
    wrapped = 0
    for module in model.modules():
        func = getattr(module, "_gradient_checkpointing_func", None)
        if func is None or getattr(func, "offloads", False):
            continue
        module._gradient_checkpointing_func = functools.partial(offload.checkpoint, func)
        module._gradient_checkpointing_func.offloads = True
        wrapped += 1
    return wrapped


class OffloadCheckpointInputs(TrainerCallback):
    """Installs the offload once the Trainer has switched checkpointing on (it does so inside `train()`)."""

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is not None and not offload_checkpoint_inputs(model):
            raise RuntimeError("gradient_checkpointing: offload found no checkpointed layer to offload")
