"""The batching loop's host shortcuts (infer/decode_batch.py): decode-only steps are scheduled and build their batch
tensors in one pass, the cache allocator's calls are skipped when no new block is needed, and the batch update inlines
the common token append. Greedy answers equal the unpatched loop's (fast
paths off: the loop as transformers ships it), with 16-token pages so answers cross page boundaries (the shortcut
falls back to transformers' allocation there), requests of other lengths finishing at other steps, and requests
joining while others decode (prefill and decode steps alternate)."""

import asyncio

import pytest
from tiny import make_tiny_model, untie_head

from tunesmith.infer import GenerationRequest, SamplingParams, load_engine

PROMPTS = ["apple banana cherry apple banana cherry apple", "one two three four five six", "code for apple",
           "Write three lines about rivers and the towns along them, one line per town.", "a", "rivers rivers"]
MAX_TOKENS = [40, 23, 31, 40, 17, 36]
BATCHING = {"page_size": 16}


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    folder = untie_head(make_tiny_model(tmp_path_factory.mktemp("host-loop") / "tiny-untied"))
    fast = load_engine("transformers", model=str(folder), device="cpu", dtype="float32", batching=BATCHING)
    plain = load_engine("transformers", model=str(folder), device="cpu", dtype="float32", batching=BATCHING)
    plain.loops.fast_paths = False
    for engine in (fast, plain):
        engine.loops.attention = "varlen"  # as served on a GPU: no attention mask, the case the shortcut takes
    yield fast, plain
    fast.shutdown()
    plain.shutdown()


def answers(engine, stagger: float = 0.0) -> list[tuple[str, str, int]]:
    """All requests, the i-th after i x stagger seconds: each one's (text, finish reason, tokens)."""
    async def one(i, prompt, max_tokens):
        await asyncio.sleep(i * stagger)
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
        done = await engine.generate(GenerationRequest(prompt=prompt, params=params))
        choice = done.choices[0]
        return choice.text, choice.finish_reason, choice.completion_tokens

    async def go():
        return await asyncio.gather(*[one(i, p, m) for i, (p, m) in enumerate(zip(PROMPTS, MAX_TOKENS))])

    return asyncio.run(go())


def batch_snapshot(io, requests) -> dict:
    """What a step's preparation leaves for the forward pass and the update: the IO's tensors and scalars, the
    requests' states."""
    q, kv = io.num_q_tokens, io.num_q_tokens + io.max_kv_read
    return {"bulk": io._bulk_input_tensor.tolist(), "write": io.write_index_storage[:, :q].tolist(),
            "read": io.read_index_storage[:, :kv].tolist(), "outputs": io.output_ids.tolist(),
            "scalars": (io.num_q_tokens, io.max_kv_read, io.num_request_in_batch, io.true_read_sizes,
                        io.true_write_sizes, io.max_length_q, dict(io.max_length_k), io.total_seqlen_q,
                        dict(io.total_seqlen_k), io.use_block_table, dict(io.req_id_to_new_token_position)),
            "requests": [(f.state.request_id, f.state.position_offset, list(f.state.tokens_to_process))
                         for f in io.requests_in_batch]}


@pytest.fixture
def decode_steps(monkeypatch):
    """Each decode-only step the shortcut prepares is first prepared by transformers' own method (its loop over
    requests, with its own read index), then rolled back and prepared by the shortcut: both must leave the same
    tensors and states, padded as under CUDA graphs and as the step is. Counts the steps checked, and the batch updates that went through DecodeUpdate."""
    from tunesmith.infer import decode_batch

    counts = {"steps": 0}
    prepare = decode_batch.DecodeBatch.prepare_decode

    def compared(self, requests, logits_processors, num_q_tokens, max_kv_read, use_padding):
        io, cache = self.io, self.cache
        before = [(f.state.position_offset, f.state.tokens_to_process) for f in requests]
        read_indices = cache.__dict__.pop("extend_read_and_write_indices", None)  # the class's method: both indices
        try:
            type(io).prepare_batch_tensors(io, requests, logits_processors, False, num_q_tokens, max_kv_read,
                                           use_padding)
        finally:
            if read_indices is not None:
                cache.extend_read_and_write_indices = read_indices
        expected = batch_snapshot(io, requests)
        for future, (offset, tokens) in zip(requests, before):
            future.state.position_offset, future.state.tokens_to_process = offset, tokens
        prepare(self, requests, logits_processors, num_q_tokens, max_kv_read, use_padding)
        assert batch_snapshot(io, requests) == expected
        return before

    def checked(self, requests, logits_processors, num_q_tokens, max_kv_read, use_padding):
        # first as a CUDA graph's padded shape (more query rows and cache reads than the requests fill), rolled back
        before = compared(self, requests, logits_processors, num_q_tokens + 5, max_kv_read + 40, True)
        for future, (offset, tokens) in zip(requests, before):
            future.state.position_offset, future.state.tokens_to_process = offset, tokens
        compared(self, requests, logits_processors, num_q_tokens, max_kv_read, use_padding)
        counts["steps"] += 1

    monkeypatch.setattr(decode_batch.DecodeBatch, "prepare_decode", checked)
    update = decode_batch.DecodeUpdate.update_batch

    def counted_update(self):
        counts["updates"] += 1
        return update(self)

    counts["updates"] = 0
    monkeypatch.setattr(decode_batch.DecodeUpdate, "update_batch", counted_update)
    return counts


def schedule_summary(result) -> tuple:
    scheduled, fast_path, q, kv = result
    futures = None if scheduled is None else [
        (f.state.request_id, f.has_new_token, f.complete_blocks, f.query_length) for f in scheduled]
    return futures, fast_path, q, kv


@pytest.fixture
def decode_schedules(monkeypatch):
    """Each decode step the scheduler's shortcut takes, where no request needs a new block (transformers' scheduler
    then changes no request and allocates nothing), is first scheduled by transformers' own method: both must pick
    the same requests with the same future states and sizes. Counts the steps checked, and all shortcut steps."""
    from tunesmith.infer import decode_batch

    counts = {"checked": 0, "steps": 0}
    schedule = decode_batch.DecodeSchedule.schedule_decode

    def checked(self, candidates, cache_budget):
        scheduler = self.scheduler
        counts["steps"] += 1
        tables, page = self.allocator.block_table, self.allocator.tokens_per_page
        if all(len(tables[s.request_id]) * page > s.position_offset for s in candidates):
            token_budget = self.cache.max_batch_tokens
            expected = schedule_summary(type(scheduler).schedule_batch(scheduler, token_budget, cache_budget))
            result = schedule(self, candidates, cache_budget)
            assert schedule_summary(result) == expected
            counts["checked"] += 1
            return result
        return schedule(self, candidates, cache_budget)

    monkeypatch.setattr(decode_batch.DecodeSchedule, "schedule_decode", checked)
    return counts


def test_greedy_answers_equal_the_unpatched_loop_with_decode_steps_taking_the_shortcut(engines, decode_steps,
                                                                                     decode_schedules):
    fast, plain = engines
    expected = answers(plain)
    assert len({a[0] for a in expected}) == len(PROMPTS)  # other prompts, other answers: equality means something
    assert [a[2] for a in expected] == MAX_TOKENS  # answers long enough to cross 16-token pages
    assert answers(fast) == expected
    assert decode_steps["steps"] >= max(MAX_TOKENS) - 2  # nearly every step was a decode-only one, taken by the patch
    assert decode_steps["updates"] >= max(MAX_TOKENS)  # every step's update went through the inlined one
    assert decode_schedules["steps"] >= max(MAX_TOKENS) - 2 and decode_schedules["checked"] > 0


def test_requests_joining_while_others_decode_get_the_same_answers(engines, decode_steps, decode_schedules):
    fast, plain = engines
    expected = answers(plain, stagger=0.05)
    assert answers(fast, stagger=0.05) == expected
    assert decode_steps["steps"] > 0 and decode_schedules["checked"] > 0
