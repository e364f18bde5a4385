"""Our patches of transformers' continuous batching loop (infer/greedy_steps.py): a step of greedy requests takes the
argmax instead of the per-request temperature/top-p processing and sampling. Greedy answers equal those of the loop
as transformers ships it (fast_paths off), alone and beside a sampling request in the same batch, and that sampling
request is still sampled (its choices differ from each other and from the greedy answer)."""

import asyncio

import pytest
from tiny import make_tiny_model, untie_head

from tunesmith.infer import GenerationRequest, SamplingParams, load_engine

PROMPTS = ["apple banana cherry apple banana cherry apple", "one two three four five six", "code for apple",
           "Write three lines about rivers and the towns along them, one line per town."]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny model with its head untied: greedy answers vary with the prompt, and sampling at temperature 1 over
    its 49k-token vocabulary gives a different answer each time."""
    return untie_head(make_tiny_model(tmp_path_factory.mktemp("fast-paths") / "tiny-untied"))


def engine_pair(model_dir, device="cpu", dtype="float32", batching=None):
    fast = load_engine("transformers", model=str(model_dir), device=device, dtype=dtype, batching=batching)
    plain = load_engine("transformers", model=str(model_dir), device=device, dtype=dtype, batching=batching)
    plain.loops.fast_paths = False  # the loop as transformers ships it (bench/engine_decode.py's "_fast_paths")
    return fast, plain


@pytest.fixture(scope="module")
def engines(model_dir):
    fast, plain = engine_pair(model_dir)
    yield fast, plain
    fast.shutdown()
    plain.shutdown()


def greedy(max_tokens=MAX_TOKENS):
    return SamplingParams(max_tokens=max_tokens, temperature=0.0)


def run(engine, requests: list[tuple[str, SamplingParams]]) -> list[list[tuple[str, str, int]]]:
    """All requests at once (one batch): each one's choices as (text, finish reason, tokens)."""
    async def go():
        done = await asyncio.gather(*[engine.generate(GenerationRequest(prompt=p, params=params))
                                      for p, params in requests])
        return [[(c.text, c.finish_reason, c.completion_tokens) for c in d.choices] for d in done]

    return asyncio.run(go())


class StepCounts:
    """Steps of the fast engine's loop: all of them (forward passes) and those that sampled."""

    def __init__(self, engine):
        served = engine.served[engine.default]
        runner = served.manager.batch_processor.model_runner
        self.picker = runner._forward_process_and_sample.__self__  # GreedySteps, installed by the loop
        self.steps = self.sampled = 0
        sample = self.picker.sample

        def counted(*args):
            self.sampled += 1
            return sample(*args)

        self.picker.sample = counted
        served.model.register_forward_hook(lambda *args: setattr(self, "steps", self.steps + 1))


def test_greedy_answers_equal_the_unpatched_loop_and_a_sampling_request_beside_them_is_sampled(engines):
    from tunesmith.infer.greedy_steps import GreedySteps

    fast, plain = engines
    requests = [(p, greedy()) for p in PROMPTS]
    expected = run(plain, requests)
    assert len({a[0][0] for a in expected}) == len(PROMPTS)  # other prompts, other answers: equality means something
    assert run(fast, requests) == expected
    counts = StepCounts(fast)
    assert isinstance(counts.picker, GreedySteps)
    assert run(fast, requests) == expected
    assert counts.steps >= MAX_TOKENS and counts.sampled == 0  # greedy only: every step took the argmax

    sampled = SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, n=3)
    mixed = [requests[0], (PROMPTS[3], sampled), requests[2]]
    got = run(fast, mixed)
    assert counts.sampled >= MAX_TOKENS  # the steps holding the sampling request sampled
    assert [got[0], got[2]] == [expected[0], expected[2]]  # greedy rows of sampling steps: still the argmax
    texts = [c[0] for c in got[1]]
    assert len(set(texts)) == 3 and expected[3][0][0] not in texts  # sampled: three answers, none the greedy one


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, batching, exact", [
    ("float32", {"use_cuda_graph": True}, True),  # graphs forced (float32 takes SDPA with a mask): answers compare
    # async batching forced too (the carry-over map, the index copies narrowed to what a step reads): answers compare
    ("float32", {"use_cuda_graph": True, "use_async_batching": True, "max_memory_percent": 0.05}, True),
    ("bfloat16", {}, False),  # as served: varlen kernel, CUDA graphs, async batching (bf16 near-ties: lengths only)
])
def test_on_cuda_with_cuda_graphs_greedy_steps_take_their_own_graphs(model_dir, dtype, batching, exact):
    fast, plain = engine_pair(model_dir, "cuda", dtype, batching)
    try:
        requests = [(p, greedy()) for p in PROMPTS]
        sampled = SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, n=3)
        expected = run(plain, requests)
        for _ in range(2):  # the second time replays the graphs the first captured
            got = run(fast, requests)
            assert [[c[1:] for c in a] for a in got] == [[c[1:] for c in a] for a in expected]
            if exact:
                assert got == expected
            mixed = run(fast, [requests[0], (PROMPTS[3], sampled)])
            assert len({c[0] for c in mixed[1]}) == 3
        io = fast.served[fast.default].manager.batch_processor.inputs_and_outputs
        keys = [key for device_io in getattr(io, "io_pairs", [io])
                for key in getattr(device_io, "device_io", device_io).graphs._storage]
        assert any(key[-1] is True for key in keys) and any(key[-1] is False for key in keys)
    finally:
        fast.shutdown()
        plain.shutdown()


def test_the_numpy_read_index_holds_what_transformers_builds(engines):
    """Requests of assorted lengths over KV pages of 16 tokens (ends on and off page boundaries, one page and many):
    infer/read_indices.py's index equals FullAttentionCacheAllocator.get_read_indices concatenated, in order."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig
    from transformers.generation.continuous_batching.cache import PagedAttentionCache
    from transformers.generation.continuous_batching.distributed import (
        DistributedHelper,
    )
    from transformers.generation.continuous_batching.requests import RequestState

    from tunesmith.infer.read_indices import ReadIndices

    fast, _ = engines
    model = fast.served[fast.default].model
    config = ContinuousBatchingConfig(page_size=16, num_blocks=64, max_batch_tokens=64, max_memory_percent=0.01)
    cache = PagedAttentionCache(model.config, config, "cpu", DistributedHelper(None, None), dtype=model.dtype)
    assert ReadIndices.applies(cache)
    steps = [(5, 1), (16, 0), (17, 3), (31, 1), (40, 8), (1, 15)]  # (tokens in the cache, new tokens)
    for i, (past, query) in enumerate(steps):
        state = RequestState(request_id=f"r{i}", initial_tokens=[0] * (past + query))
        assert cache.can_store_request_tokens(state, past + query)
    io = type("IO", (), {})()
    io.read_index_storage = torch_empty((len(cache.cache_allocators), 512))
    io.true_read_sizes = [0] * len(cache.cache_allocators)
    indices = ReadIndices.__new__(ReadIndices)
    indices.cache, indices.lengths = cache, [(f"r{i}", past + query) for i, (past, query) in enumerate(steps)]
    indices.fill(io)
    for a, allocator in enumerate(cache.cache_allocators.values()):
        expected = [row for i, (past, query) in enumerate(steps)
                    for row in allocator.get_read_indices(f"r{i}", past, query)]
        assert io.true_read_sizes[a] == len(expected) == sum(p + q for p, q in steps)
        assert io.read_index_storage[a, :len(expected)].tolist() == expected


def torch_empty(shape):
    import torch

    return torch.full(shape, -1, dtype=torch.int64)


def test_the_carry_over_map_is_transformers_own():
    """Async batching's map from the step being prepared to the previous step's output rows (CUDA only, so built
    here from the two steps' request positions): requests in both, in one only, reordered."""
    from types import SimpleNamespace

    from transformers.generation.continuous_batching.input_outputs import (
        ContinuousBatchingAsyncIOs,
    )

    from tunesmith.infer.carry_over import carry_over_ids

    def io(previous: dict, following: dict, current: int = 1):
        pairs = [None, None]
        pairs[current] = SimpleNamespace(host_io=SimpleNamespace(req_id_to_new_token_position=following))
        pairs[1 - current] = SimpleNamespace(host_io=SimpleNamespace(req_id_to_new_token_position=previous))
        return SimpleNamespace(io_pairs=pairs, current_pair=current, max_batch_tokens=64)

    cases = [io({"a": 0, "b": 1, "c": 2}, {"c": 5, "a": 9, "d": 12}), io({}, {"a": 3}, 0), io({"a": 0}, {}),
             io({f"r{i}": i for i in range(20)}, {f"r{i}": 3 * i for i in range(5, 21)})]
    for case in cases:
        assert carry_over_ids(case).tolist() == ContinuousBatchingAsyncIOs.infer_carry_over_ids(case).tolist()


def test_a_stream_whose_loop_stopped_without_failing_it_gets_an_error_not_a_wait(monkeypatch):
    """The loop died after a request joined and never failed it: its stream's watch finds the loop stopped and the
    queue empty, and the wait for the next output ends with the error (outputs already queued come first)."""
    from types import SimpleNamespace

    from tunesmith.infer import continuous
    from tunesmith.infer.types import EngineError

    monkeypatch.setattr(continuous, "LOOP_POLL_S", 0.01)
    alive = {"running": True}
    manager = SimpleNamespace(is_running=lambda: alive["running"],
                              background_thread_status=SimpleNamespace(can_accept_new_requests=lambda: None,
                                                                       fatal_error="CUDA error: boom"))

    async def scenario():
        queue = asyncio.Queue()
        unwatch = continuous.watch_loop(queue, manager)
        try:
            queue.put_nowait("token 1")
            queue.put_nowait("token 2")
            assert await continuous.queued_outputs(queue, manager) == ["token 1", "token 2"]
            await asyncio.sleep(0.05)  # the loop runs: the watch adds nothing
            assert queue.empty()
            alive["running"] = False
            with pytest.raises(EngineError, match="loop stopped .CUDA error: boom"):
                await asyncio.wait_for(continuous.queued_outputs(queue, manager), 2)
        finally:
            unwatch()

    asyncio.run(scenario())


def test_the_host_to_device_copy_takes_the_indices_a_step_reads(engines):
    """Async batching's transfer (CUDA only, so two CPU IOs of a real batch processor stand for host and device):
    the first num_q_tokens write and max_kv_read + num_q_tokens read entries arrive, the rest of the device's
    storages is not copied, the other inputs are."""
    from transformers.generation.continuous_batching.input_outputs import (
        ContinuousBatchingIOs,
    )

    from tunesmith.infer.carry_over import used_index_copies

    fast, _ = engines
    run(fast, [(PROMPTS[0], greedy(2))])
    processor = fast.served[fast.default].manager.batch_processor
    host, device = (ContinuousBatchingIOs(processor.cache, processor.config, processor.cb_config, processor.model_device,
                                          processor.model_dtype, processor.logit_processor) for _ in range(2))
    for io, value in ((host, 7), (device, -5)):
        io.write_index_storage.fill_(value)
        io.read_index_storage.fill_(value)
        io._bulk_input_tensor.fill_(value)
    host.num_q_tokens, host.max_kv_read = 16, 40
    used_index_copies(host, host._transfer_inputs)(device, stream=None)
    assert device.write_index_storage[:, :16].eq(7).all() and device.write_index_storage[:, 16:].eq(-5).all()
    assert device.read_index_storage[:, :56].eq(7).all() and device.read_index_storage[:, 56:].eq(-5).all()
    assert device._bulk_input_tensor.eq(7).all() and (device.num_q_tokens, device.max_kv_read) == (16, 40)
    assert host.read_index_storage.shape[1] == device.read_index_storage.shape[1] > 56  # whole storages again
