"""Prefix caching (transformers' block sharing) in the continuous batch: a request cancelled mid-generation, by a stop
string or by its client going away, leaves its prompt's blocks cached; the same or an overlapping prompt that follows
reuses them and must answer greedily what a fresh engine answers. Block sharing was off after one greedy mismatch
following a cancelled request in a full CI run (41fef4d); this pins the case down."""

import asyncio

import pytest

from tiny import make_tiny_model, untie_head
from tunesmith.infer import GenerationRequest, SamplingParams, load_engine

SHARED = "You write short codes for words. " + " ".join(f"Rule {i}: keep code {i} short and plain." for i in range(40))
USERS = [" The code for apple", " The code for river"]  # after SHARED: the first blocks are the same
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny model with its head untied: greedy answers vary with the prompt, so a wrong cache shows."""
    return untie_head(make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-untied"))


def request(user: str, stop: list[str] | None = None) -> GenerationRequest:
    return GenerationRequest(prompt=SHARED + user,
                             params=SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, stop=stop or []))


async def answer(engine, user: str) -> str:
    return "".join([d.text async for d in engine.stream(request(user))])


FRESH: dict[tuple, dict[str, str]] = {}


def fresh(model_dir, device: str, dtype: str) -> dict[str, str]:
    """Each prompt's greedy answer from an engine that never saw the other requests and shares no blocks."""
    if (device, dtype) not in FRESH:
        engine = load_engine("transformers", model=str(model_dir), device=device, dtype=dtype,
                             batching={"allow_block_sharing": False})
        try:
            FRESH[device, dtype] = {user: asyncio.run(answer(engine, user)) for user in USERS}
        finally:
            engine.shutdown()
        assert len(set(FRESH[device, dtype].values())) == 2  # the prompts end in other words: other answers
    return FRESH[device, dtype]


@pytest.mark.parametrize("device, dtype, batching", [
    ("cpu", "float32", {}),  # the engine's own settings: transformers' 256-token pages
    ("cpu", "float32", {"page_size": 16}),  # many shared blocks per prompt
    # bfloat16 on CUDA: varlen attention, CUDA graphs, and so async batching (a cancelled request's step in flight).
    # Answers are not compared there: on an H200 this tiny random model's bf16 greedy answer to the same prompt
    # differs between consecutive requests even with sharing off (near-tied logits, shape-dependent rounding;
    # measured Dec 4), so only "the loop survives the cancels, answers every request and reuses blocks" is checked.
    pytest.param("cuda", "bfloat16", {}, marks=pytest.mark.gpu),
])
def test_greedy_after_cancelled_requests_equals_a_fresh_engine_with_prefix_sharing(model_dir, device, dtype, batching):
    expected = fresh(model_dir, device, dtype)
    exact = dtype == "float32"

    def same(got, want):
        return got == want if exact else all(got)
    engine = load_engine("transformers", model=str(model_dir), device=device, dtype=dtype, batching=batching)
    assert len(engine.prompt_ids(request(USERS[0]))) > 256  # the shared start fills whole blocks
    served = engine.served[engine.default]
    hits: list[int] = []

    async def scenario():
        cache = engine.loops.manager(served).batch_processor.cache
        assert cache.use_prefix_sharing  # on by default
        search = cache.search_prefix_match
        cache.search_prefix_match = lambda rid, ids: hits.append(search(rid, ids)) or hits[-1]
        for round in range(4):
            first, other = USERS[round % 2], USERS[1 - round % 2]
            stop = expected[first][len(expected[first]) // 2:][:3]  # met halfway: the engine cancels the request
            cut = "".join([d.text async for d in engine.stream(request(first, [stop]))])
            assert not exact or (expected[first].startswith(cut) and len(cut) < len(expected[first]))
            assert same([await answer(engine, first)], [expected[first]])  # the same prompt, right after the cancel
            stream = engine.stream(request(other))
            await stream.__anext__()  # the client reads one chunk and goes away
            await stream.aclose()
            both = await asyncio.gather(answer(engine, other), answer(engine, first))  # overlapping, together
            assert same(both, [expected[other], expected[first]])

    try:
        asyncio.run(scenario())
    finally:
        engine.shutdown()
    assert sum(1 for h in hits if h > 0) >= 8  # later requests did reuse cached blocks


def test_a_released_request_completing_blocks_is_skipped_not_a_failed_loop(model_dir):
    """Async batching (GPU) updates a step after the next batch released a cancelled request's blocks; the update's
    block registration must not fail the loop (continuous.skip_released_requests). Shown on the real cache."""
    from types import SimpleNamespace

    engine = load_engine("transformers", model=str(model_dir), device="cpu", dtype="float32")
    try:
        cache = engine.loops.manager(engine.served[engine.default]).batch_processor.cache
        released = SimpleNamespace(request_id="cancelled-in-flight", status=None, initial_tokens=list(range(300)),
                                   generated_tokens=[1])
        cache.mark_complete_blocks(released, {name: 1 for name in cache.cache_allocators})  # no KeyError
        assert asyncio.run(answer(engine, USERS[0])) == fresh(model_dir, "cpu", "float32")[USERS[0]]
    finally:
        engine.shutdown()
