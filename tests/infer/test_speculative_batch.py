"""--speculative ngram inside the continuous batch (infer/speculative_batch.py): greedy answers, streamed and whole,
with concurrent requests in one batch, equal those without speculation, also where a stop string or max_tokens cuts
an accepted run; the copying prompt takes fewer forward passes than tokens; a sampling request beside speculating
ones answers; prefix caching stays exact across a follow-up that reuses a speculated answer's blocks.

The model: the tiny random llama with its output head = its embeddings + noise (tiny.untie_head echo=True). It
then mostly repeats its last token and now and then switches, so prompt lookup proposes runs the model accepts and
proposals it rejects, like a real model copying text."""

import asyncio
import pytest

from tiny import make_tiny_model, untie_head
from tunesmith.infer import GenerationRequest, SamplingParams, load_engine

PROMPTS = ["apple banana cherry apple banana cherry apple", "one two three four five six", "code for apple",
           "Write three lines about rivers."]
COPYING = "red red red red"  # answered 'CausesCausesCauses dependent obj obj obj obj ...': long accepted runs
MAX_TOKENS = 30
BATCHING = {"page_size": 4}  # small KV blocks: answers complete many, so prefix sharing meets speculated ones


@pytest.fixture(scope="module")
def echo_model(tmp_path_factory):
    return untie_head(make_tiny_model(tmp_path_factory.mktemp("spec-batch") / "echo"), std=0.07, echo=True)


@pytest.fixture(scope="module")
def engines(echo_model):
    plain = load_engine("transformers", model=str(echo_model), device="cpu", dtype="float32", batching=BATCHING)
    spec = load_engine("transformers", model=str(echo_model), device="cpu", dtype="float32", batching=BATCHING,
                       speculative="ngram:4")
    yield plain, spec
    plain.shutdown()
    spec.shutdown()


def greedy(max_tokens=MAX_TOKENS, stop=None):
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=stop or [])


async def streamed(engine, request):
    deltas = [d async for d in engine.stream(request)]
    return "".join(d.text for d in deltas), deltas[-1].finish_reason, deltas[-1].completion_tokens, len(deltas)


async def whole(engine, request):
    done = await engine.generate(request)
    return done.choices[0].text, done.choices[0].finish_reason, done.completion_tokens


def answers(engine, params_list, stream_first=True):
    """All prompts at once (one batch): the first streamed, the others whole."""
    async def go():
        requests = [GenerationRequest(prompt=p, params=params) for p, params in params_list]
        first = streamed(engine, requests[0]) if stream_first else whole(engine, requests[0])
        return await asyncio.gather(first, *[whole(engine, r) for r in requests[1:]])

    return asyncio.run(go())


def counting_forwards(engine) -> list:
    calls: list = []
    engine.served[engine.default].model.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_greedy_answers_equal_without_speculation_concurrent_streamed_and_whole(engines):
    plain, spec = engines
    params = [(p, greedy()) for p in PROMPTS]
    before = spec.speculation_counts().get(spec.default, (0, 0, 0))
    expected, got = answers(plain, params), answers(spec, params)
    assert [a[:3] for a in got] == [a[:3] for a in expected]
    assert got[0][3] > 1  # streamed in pieces
    _, accepted, proposed = (a - b for a, b in zip(spec.speculation_counts()[spec.default], before))
    assert accepted > 0 and proposed > accepted  # runs were accepted and proposals rejected
    assert all(a[2] == MAX_TOKENS for a in got)


def test_a_copying_answer_takes_fewer_forward_passes_than_tokens(engines):
    plain, spec = engines
    forwards = counting_forwards(spec)
    (text, _, tokens), = answers(spec, [(COPYING, greedy(40))], stream_first=False)
    assert tokens == 40 and len(forwards) < tokens / 2  # prefill + steps of several accepted tokens each
    assert (text, "length", 40) == answers(plain, [(COPYING, greedy(40))], stream_first=False)[0]


@pytest.mark.parametrize("cut", ["stop", "max_tokens"])
def test_a_stop_string_or_max_tokens_inside_an_accepted_run_cuts_as_without_speculation(engines, cut):
    plain, spec = engines
    full = answers(plain, [(COPYING, greedy(40))], stream_first=False)[0][0]
    if cut == "stop":  # the fifth repetition of the answer's longest-repeated word: deep in a run
        words = full.split(" ")
        stop = " ".join([max(set(words), key=words.count)] * 5)
        assert full.index(stop) > 0
        params = [(COPYING, greedy(40, [stop])), (PROMPTS[2], greedy(40, [stop]))]
    else:
        params = [(COPYING, greedy(13)), (PROMPTS[2], greedy(7))]
    expected, got = answers(plain, params), answers(spec, params)
    assert [a[:3] for a in got] == [a[:3] for a in expected]
    if cut == "stop":
        assert expected[0][1] == "stop" and len(expected[0][0]) < len(full)
    else:
        assert [a[2] for a in got] == [13, 7] and got[0][1] == "length"


def test_a_sampling_request_beside_speculating_greedy_ones_answers(engines):
    plain, spec = engines
    sampled = SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0)
    params = [(COPYING, greedy()), (PROMPTS[3], sampled), (PROMPTS[1], greedy())]
    before = spec.speculation_counts()[spec.default][0]
    got = answers(spec, params)
    assert got[1][0] and got[1][2] == MAX_TOKENS
    expected = answers(plain, [params[0], params[2]])
    assert got[0][:3] == expected[0][:3] and got[2] == expected[1]
    assert spec.speculation_counts()[spec.default][0] > before


def test_a_follow_up_reusing_a_speculated_answers_cache_blocks_answers_as_without(engines):
    """Prefix caching stays on: the second turn's prompt holds the first answer, whose full KV blocks (4 tokens)
    were registered for sharing as the answer was verified; a block a rejected proposal completed must not be."""
    plain, spec = engines
    results = []
    for engine in (plain, spec):
        first = answers(engine, [(PROMPTS[2], greedy())], stream_first=False)[0][0]
        follow = PROMPTS[2] + first + " and again"
        results.append([answers(engine, [(follow, greedy())], stream_first=False)[0] for _ in range(2)])
    assert results[1] == results[0]
    cache = spec.served[spec.default].manager.batch_processor.cache
    assert cache.use_prefix_sharing


def test_an_eos_inside_an_accepted_run_ends_the_answer_there():
    """The accepted run [7, 8, 2, 9] with 2 the end-of-sequence token: the answer ends at 2, as one token per step
    would have ended it; 9 is never emitted."""
    from transformers.generation.continuous_batching.requests import FutureRequestState, RequestState, RequestStatus

    from tunesmith.infer.speculative_batch import BatchSpeculation, SpeculationCounts

    state = RequestState(request_id="r", initial_tokens=[1, 4], max_new_tokens=20, eos_token_id=2)
    state.status = RequestStatus.DECODING
    state.generated_tokens = [5]
    state.position_offset = 6  # after this step's forward over [5, 7, 8, 2]
    future = FutureRequestState(state, True, {}, 4)
    speculation = BatchSpeculation.__new__(BatchSpeculation)
    speculation.counts, speculation.cache = SpeculationCounts(), type("NoSharing", (), {"use_prefix_sharing": False})
    token, _ = speculation.accept(future, [7, 8, 2], [7, 8, 2, 9], [None] * 4)
    assert token == 2 and state.generated_tokens == [5, 7, 8]  # the batch update appends 2 and finishes
    assert (speculation.counts.proposed, speculation.counts.accepted) == (3, 3)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, graphs, exact", [
    ("float32", {"use_cuda_graph": True}, True),  # forced on (float32's SDPA mask leaves them off): answers compare
    ("bfloat16", {}, False),  # the served default: varlen kernel, CUDA graphs (bf16 near-ties: lengths compared)
])
def test_on_cuda_with_cuda_graphs_greedy_answers_equal_and_a_copy_takes_fewer_steps_prefix_sharing_on(
        echo_model, dtype, graphs, exact):
    """The logits of a step's proposals are read from the padded, graph-captured slice of the varlen path."""
    batching = {**BATCHING, **graphs}
    params = [(COPYING, greedy(40)), *[(p, greedy()) for p in PROMPTS]]
    plain = load_engine("transformers", model=str(echo_model), device="cuda", dtype=dtype, batching=batching)
    try:
        expected = answers(plain, params)
    finally:
        plain.shutdown()
    spec = load_engine("transformers", model=str(echo_model), device="cuda", dtype=dtype, batching=batching,
                       speculative="ngram:4")
    try:
        got = answers(spec, params)
        assert [a[1:3] for a in got] == [a[1:3] for a in expected]
        if exact:
            assert [a[0] for a in got] == [a[0] for a in expected]
        forwards = counting_forwards(spec)
        (_, _, tokens), = answers(spec, [(COPYING, greedy(40))], stream_first=False)
        assert tokens == 40 and len(forwards) < tokens / 2
        processor = spec.served[spec.default].manager.batch_processor
        assert processor.cache.use_prefix_sharing and processor.model_runner.use_cuda_graph_varlen
    finally:
        spec.shutdown()


def test_another_transformers_version_is_refused_at_load_naming_both(echo_model, monkeypatch):
    """The patched internals are transformers 5.23's: another version is refused when the engine loads."""
    import transformers

    from tunesmith.errors import TunesmithError

    monkeypatch.setattr(transformers, "__version__", "5.24.0")
    with pytest.raises(TunesmithError) as err:
        load_engine("transformers", model=str(echo_model), device="cpu", dtype="float32", speculative="ngram:4")
    assert "transformers 5.23" in str(err.value) and "5.24.0 is installed" in str(err.value)


def test_only_blocks_of_cached_tokens_are_registered_for_prefix_sharing(engines):
    """After every step, each KV block registered for sharing holds only positions the cache has written with
    accepted tokens (below the request's position): a block completed by a rejected proposal, or ending at the
    model's own next token (not in the cache yet), is not (a request cancelled by a stop string right then would
    leave it shared with the wrong KV)."""
    _, spec = engines
    answers(spec, [(COPYING, greedy(8))], stream_first=False)  # the loop and its cache exist
    cache = spec.served[spec.default].manager.batch_processor.cache
    mark, beyond = cache.mark_complete_blocks, []

    def checked(state, complete_blocks):
        mark(state, complete_blocks)
        for allocator in cache.cache_allocators.values():
            table = allocator.block_table.get(state.request_id, [])
            hashed = sum(1 for block in table if allocator.ledger.block_to_hash.get(block) is not None)
            if hashed * allocator.tokens_per_page > state.position_offset:
                beyond.append((state.request_id, hashed, state.position_offset))

    cache.mark_complete_blocks = checked
    try:
        got = answers(spec, [(p, greedy(60)) for p in (COPYING, *PROMPTS)])
    finally:
        cache.mark_complete_blocks = mark
    assert all(a[2] == 60 for a in got) and not beyond
