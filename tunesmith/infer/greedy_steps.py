"""Greedy steps of the transformers engine's continuous batch take the argmax of each logits row.

    GreedySteps(processor).install()      # on a batch processor (transformers 5.23), before its first step
    patch_batch_processors(manager, fn)   # fn(processor) once per batch processor the manager's loop creates

The batch runs in sampling mode (infer/continuous.py): each request has its own temperature and top_p, and
transformers applies them to every logits row (temperature, then top-p: a sort and a cumulative sum over the whole
vocabulary per row, ~1 ms per step for a 151k vocabulary on an H200), then softmax and multinomial sampling. A greedy
request (temperature under GREEDY_BELOW) goes at a vanishing temperature, where all of that returns the argmax anyway.
A step whose requests with a new token are all greedy therefore takes the argmax of each row instead, and skips
building the per-request processor arguments on the host; a step with any sampling request keeps the processors and
sampling for all its rows. Requests with logprobs never reach the batch (they take generate(), infer/generate_paths.py).

CUDA graphs: transformers captures the whole step (forward, processors, sampling) as one graph per batch shape, keyed
by `_get_graph_key` of the IO that holds the graphs (both IO pairs' device side with async batching). A greedy step
replays or captures a graph of its own: the key gets the greedy flag as its last element. The flag is set when the
step's batch tensors are prepared and read when that same step is computed, in the loop's order (prepare N, compute N,
update N-1), so the graph and the eager forward always see the step's own flag. Async batching's carry-over (the
previous step's tokens written into this step's input on the device) runs first, as in transformers' own step.

The same three patches carry the step's other flag, decode-only (every sequence in it has one query token, so the
attention packs query heads as rows: infer/attention.py `_decode_rows`): set with the batch tensors, in the graph key
before the greedy flag, and passed to the model call as the DECODE_ONLY keyword, which transformers hands on to the
attention function of every layer.

Argmax on the model's logits (bf16 on a GPU) picks what argmax on their float32 copy picks: the conversion is exact
and keeps the order. Ties (frequent in bf16 random weights) went to whichever tied token multinomial drew; argmax
takes the first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tunesmith.infer.attention import DECODE_ONLY
from tunesmith.infer.decoding import GREEDY_BELOW

SUPPORTED = "5.23"  # transformers minor version whose continuous batching internals infer/ patches
PATCHED = "_tunesmith_patched"  # set on a batch processor once its patches are installed
log = logging.getLogger("tunesmith")


def transformers_version() -> str:
    import transformers

    return transformers.__version__


def transformers_minor() -> str:
    return ".".join(transformers_version().split(".")[:2])


def patch_batch_processors(manager: Any, install: Callable[[Any], None]) -> None:
    """Run install(processor) on each batch processor `manager` (not started yet) creates, in its loop thread, before
    the first step. transformers reuses a processor after a reset: it is patched once."""
    create = manager._create_batch_processor

    def create_patched() -> Any:
        processor = create()
        if not getattr(processor, PATCHED, False):
            install(processor)
            setattr(processor, PATCHED, True)
        return processor

    manager._create_batch_processor = create_patched


def device_ios(io: Any) -> list[Any]:
    """The IO objects that hold CUDA graphs: the one synchronous IO, or the device side of both async IO pairs."""
    pairs = getattr(io, "io_pairs", None)
    return [pair.device_io for pair in pairs] if pairs is not None else [io]


def is_greedy(state: Any) -> bool:
    return state.logit_processor_kwargs.get("temperature", 1.0) < GREEDY_BELOW


class GreedySteps:
    """The argmax on greedy-only steps, installed on one batch processor: four patched internals (the IO's batch
    tensors and graph key, the logits processors' arguments, the model runner's forward and sampling)."""

    def __init__(self, processor: Any, decode_rows: bool = True):
        self.processor = processor
        self.decode_rows = decode_rows  # flag decode-only steps (off: bench/engine_decode.py's "_decode_rows")
        self.greedy_step = False  # the step being prepared / computed has only greedy requests with a new token
        self.decode_step = False  # ... and every request in it has exactly one query token

    def install(self) -> None:
        processor = self.processor
        io, runner, processors = processor.inputs_and_outputs, processor.model_runner, processor.logit_processor
        self.prepare, io.prepare_batch_tensors = io.prepare_batch_tensors, self._prepare_batch_tensors
        for device_io in device_ios(io):
            device_io._get_graph_key = self._keyed(device_io._get_graph_key)
        # the processors belong to the manager: a later batch processor of the same manager wraps their own method
        self.tensor_args = processors.__dict__.setdefault("_tunesmith_tensor_args", processors.prepare_tensor_args)
        processors.prepare_tensor_args = self._prepare_tensor_args
        self.sample, runner._forward_process_and_sample = runner._forward_process_and_sample, self._forward_and_pick
        self.carry_over = io.carry_over_tokens

    def _prepare_batch_tensors(self, requests_in_batch: list[Any], *args: Any, **kwargs: Any) -> None:
        self.greedy_step = not self.processor.return_logprobs and all(
            is_greedy(future.state) for future in requests_in_batch if future.has_new_token)
        self.decode_step = self.decode_rows and bool(requests_in_batch) and all(
            future.query_length == 1 and future.has_new_token for future in requests_in_batch)
        self.prepare(requests_in_batch, *args, **kwargs)

    def _prepare_tensor_args(self, requests_in_batch: list[Any], arg_storage: Any) -> Any:
        """Each request's temperature and top_p into the batch tensors: only a sampling step reads them."""
        return arg_storage if self.greedy_step else self.tensor_args(requests_in_batch, arg_storage)

    def _keyed(self, graph_key: Callable[[], tuple]) -> Callable[[], tuple]:
        def key() -> tuple:
            return (*graph_key(), self.decode_step, self.greedy_step)

        return key

    def _forward_and_pick(self, model: Any, batch_data: dict, carry_over_ids: Any, prev_output_ids: Any,
                          output_ids: Any) -> None:
        """transformers' ModelRunner._forward_process_and_sample with the argmax of every logits row in place of the
        processors and sampling, on a greedy step."""
        batch_data[DECODE_ONLY] = self.decode_step
        if not self.greedy_step:
            return self.sample(model, batch_data, carry_over_ids, prev_output_ids, output_ids)
        self.carry_over(batch_data["input_ids"], carry_over_ids, prev_output_ids)  # no-op when synchronous
        logits = model(**batch_data).logits
        if "logits_to_keep" not in batch_data:
            logits = logits[:, batch_data["logits_indices"], :]
        tokens = logits[0].argmax(dim=-1)
        output_ids[0, :tokens.size(0)].copy_(tokens)
        return None
