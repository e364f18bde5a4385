"""The server's logic on the real transformers engine and a tiny random model, in process (no HTTP): what a
scripted engine cannot show. The batching loop runs in a thread of its own; an exception in it used to stop it for
good (every later request a 500 while /health said ok)."""

import asyncio

import pytest
from fastapi.testclient import TestClient

from tunesmith.config import DeployConfig
from tunesmith.serve.app import build_app
from tunesmith.serve.chat import create_chat_completion
from tunesmith.serve.completion import create_completion
from tunesmith.serve.errors import APIError
from tunesmith.serve.protocol import ChatCompletionRequest, CompletionRequest
from tunesmith.serve.serving import Serving

USER = [{"role": "user", "content": "say hello"}]
POISON = "zebra crossing"  # a prompt the injected failure recognises by its last token


@pytest.fixture
def engine(tiny_model):
    from tunesmith.infer import load_engine

    engine = load_engine("transformers", model=str(tiny_model), device="cpu", dtype="float32")
    yield engine
    engine.shutdown()


def chat(serving, **body):
    return asyncio.run(create_chat_completion(serving, ChatCompletionRequest(**{"messages": USER, **body})))


def complete(serving, **body):
    return asyncio.run(create_completion(serving, CompletionRequest(**body)))


def poison_the_loop(engine, monkeypatch) -> list:
    """Make the model's forward raise inside the batching loop when a batch holds POISON's last token."""
    served = engine.served[engine.default]
    token = served.template.tokenizer(POISON)["input_ids"][-1]
    forward, calls = served.model.forward, []

    def failing(*args, **kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and bool((ids == token).any()):
            calls.append(1)
            raise RuntimeError("injected failure")
        return forward(*args, **kwargs)

    monkeypatch.setattr(served.model, "forward", failing)
    return calls


def test_the_prompt_is_rendered_once_per_request(engine, monkeypatch):
    template = engine.template_for(None)
    calls = []
    render = template.render_prompt
    monkeypatch.setattr(template, "render_prompt", lambda *a, **kw: calls.append(1) or render(*a, **kw))
    serving = Serving(engine, DeployConfig(max_prompt_tokens=500))
    reply = chat(serving, max_tokens=2)
    assert len(calls) == 1 and reply.usage.prompt_tokens == len(render(USER))
    complete(serving, prompt="one two", max_tokens=2)
    assert len(calls) == 1  # completions tokenize the text, no template


def test_a_failure_inside_the_loop_fails_that_request_and_the_next_is_answered(engine, monkeypatch):
    serving = Serving(engine, DeployConfig())
    assert chat(serving, max_tokens=2).choices[0].finish_reason == "length"  # the loop runs
    calls = poison_the_loop(engine, monkeypatch)
    for stream in (False, True):
        with pytest.raises(APIError) as err:
            asyncio.run(create_completion(serving, CompletionRequest(prompt=POISON, max_tokens=3, stream=stream)))
        assert err.value.status == 500 and "injected failure" in err.value.message
    assert len(calls) == 2 and serving.active == 0
    assert engine.health() is None  # restarted
    for _ in range(2):
        reply = chat(serving, max_tokens=3)
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3


def test_health_is_503_naming_why_when_the_loop_cannot_start_again(engine, monkeypatch):
    serving = Serving(engine, DeployConfig())
    chat(serving, max_tokens=1)
    poison_the_loop(engine, monkeypatch)
    with pytest.raises(APIError):
        complete(serving, prompt=POISON, max_tokens=2)

    def cannot(served):
        raise MemoryError("no room for the KV cache")

    monkeypatch.setattr(engine.loops, "_start", cannot)
    with TestClient(build_app(engine, DeployConfig())) as client:
        r = client.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
        assert "no room for the KV cache" in r.json()["reason"]
        assert client.post("/v1/chat/completions", json={"messages": USER}).status_code == 500
        monkeypatch.undo()  # the device is back: the next check starts the loop
        assert client.get("/health").json() == {"status": "ok"}
        assert client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2}).status_code == 200


@pytest.mark.parametrize("body", [
    {"prompt": ""},  # no token to continue from: the step failed reshaping an empty batch
    {"prompt": "\x04"},  # text the tokenizer drops: the same
    {"prompt": "hello", "temperature": 1e-40},  # logits / 1e-40 overflow: inf, then nan, and sampling failed
])
def test_requests_that_stopped_the_loop_are_answered_and_so_is_the_next(engine, body):
    serving = Serving(engine, DeployConfig())
    reply = complete(serving, max_tokens=3, **body)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3
    assert complete(serving, prompt="next", max_tokens=2).usage.completion_tokens == 2
    assert engine.health() is None


def test_a_tiny_temperature_is_greedy(engine):
    serving = Serving(engine, DeployConfig())
    greedy = complete(serving, prompt="The river ran", max_tokens=6, temperature=0).choices[0].text
    assert complete(serving, prompt="The river ran", max_tokens=6, temperature=1e-30).choices[0].text == greedy
    assert complete(serving, prompt="The river ran", max_tokens=6, temperature=1e-30, seed=3).choices[0].text == greedy


def answer_with(engine, text: str) -> None:
    """Make the tiny model answer USER with `text`'s tokens, greedily. With tied embeddings it repeats its last input
    token (the hidden state stays close to that token's embedding); an untied head whose row for each next token is
    the previous token's embedding, scaled up, turns that echo into a chain: prompt's last token -> text's tokens."""
    import torch

    served = engine.served[engine.default]
    prompt = served.template.render_prompt(USER)
    chain = [prompt[-1], *served.template.tokenizer(text, add_special_tokens=False)["input_ids"]]
    embeddings = served.model.model.embed_tokens.weight.data
    head = embeddings.clone()
    for token, following in zip(chain, chain[1:]):
        head[following] = 4 * embeddings[token]
    served.model.lm_head.weight = torch.nn.Parameter(head)


def test_logprob_bytes_are_each_tokens_own_bytes_and_make_up_the_answers_utf8(engine):
    """SmolLM2's byte-level BPE splits the emoji into three tokens, none a whole character: each one's text is
    U+FFFD, its bytes are its part of the emoji's UTF-8 (as OpenAI gives them), and together they spell the answer."""
    answer_with(engine, "\U0001F600")
    reply = chat(Serving(engine, DeployConfig()), max_tokens=3, temperature=0, logprobs=True, top_logprobs=2)
    choice = reply.choices[0]
    assert choice.message.content == "\U0001F600"
    tokens = choice.logprobs.content
    assert len(tokens) == 3 and all(t.token == "\ufffd" for t in tokens)
    assert b"".join(bytes(t.bytes) for t in tokens) == "\U0001F600".encode()
    assert all(t.top_logprobs[0].token == t.token and t.top_logprobs[0].bytes == t.bytes for t in tokens)


def test_a_prompt_longer_than_the_context_is_400_naming_both_numbers(engine, monkeypatch):
    monkeypatch.setattr(engine.served[engine.default].model.config, "max_position_embeddings", 1024)
    serving = Serving(engine, DeployConfig())
    count = lambda text: len(engine.template_for(None).tokenizer(text)["input_ids"])  # noqa: E731
    long, short = "word " * 6000, "word " * 1000
    with pytest.raises(APIError) as err:
        complete(serving, prompt=long)
    assert err.value.status == 400 and err.value.code == "context_length_exceeded"
    message = err.value.message
    assert "maximum context length is 1024 tokens" in message and f"resulted in {count(long)} tokens" in message
    with pytest.raises(APIError) as err:
        complete(serving, prompt=short, max_tokens=30)
    assert err.value.param == "max_tokens" and f"max_tokens <= {1024 - count(short)}" in err.value.message
    reply = complete(serving, prompt=short)  # max_tokens from the defaults: what fits
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 1024 - count(short)


def test_more_tokens_than_the_kv_cache_holds_is_400_before_joining_the_loop(engine, monkeypatch):
    """A request the cache cannot hold would stop the loop ("No requests can be scheduled and no requests can be
    offloaded"); the tiny model's cache holds 600k tokens, so the guard is shown with a smaller number."""
    from tunesmith.infer import continuous

    serving = Serving(engine, DeployConfig())
    monkeypatch.setattr(continuous, "cache_tokens", lambda manager: 20)
    with pytest.raises(APIError) as err:
        complete(serving, prompt="word " * 10, max_tokens=15)
    assert err.value.status == 400 and "(20 tokens)" in err.value.message
    assert complete(serving, prompt="word " * 10, max_tokens=5).usage.completion_tokens == 5


@pytest.mark.parametrize("body", [{"logprobs": True}, {"seed": 5, "temperature": 1.0}])
def test_a_request_on_the_exact_path_whose_client_left_stops_its_generate_call(engine, monkeypatch, body):
    """logprobs and seeds run generate() under the engine's lock, the batch paused meanwhile: an abandoned one ran
    to max_tokens while every other request waited."""
    served = engine.served[engine.default]
    forward, steps = served.model.forward, []
    monkeypatch.setattr(served.model, "forward", lambda *a, **kw: steps.append(1) or forward(*a, **kw))
    serving = Serving(engine, DeployConfig())
    assert chat(serving, max_tokens=60, **body).choices[0].finish_reason == "length"  # it would go the distance
    steps.clear()

    async def leave_early() -> None:
        answer = asyncio.ensure_future(create_chat_completion(serving, ChatCompletionRequest(
            messages=USER, max_tokens=60, **body)))
        while len(steps) < 3:
            await asyncio.sleep(0.005)
        answer.cancel()  # what routes.py does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await answer

    asyncio.run(leave_early())
    assert engine.exact_lock.acquire(timeout=60)  # generate() let go of the lock
    engine.exact_lock.release()
    assert len(steps) < 20 and serving.active == 0
    assert chat(serving, max_tokens=2).choices[0].finish_reason == "length"  # and the next request is answered


def test_a_seeded_answer_streams_token_by_token_as_the_exact_path_answered_it(engine):
    """A seed reseeds generate() per request: streamed as it comes (it arrived in one chunk at the end), the same
    tokens as the exact path's generate() gave whole."""
    from tunesmith.infer import generate_paths
    from tunesmith.infer.decoding import Decoder
    from tunesmith.infer.types import GenerationRequest, SamplingParams

    served = engine.served[engine.default]
    p = SamplingParams(temperature=1.0, seed=7, max_tokens=12, n=2)
    request = GenerationRequest(messages=USER, params=p)

    async def deltas() -> list:
        return [d async for d in engine.stream(request)]

    streamed = asyncio.run(deltas())
    for choice in range(2):
        pieces = [d.text for d in streamed if d.index == choice and d.text]
        tokens, _ = generate_paths.generate_exact(served, engine.exact_lock, engine.prompt_ids(request), p, choice)
        assert len(pieces) > 2 and "".join(pieces) == Decoder(served.template, []).update(tokens, final=True)[0]


def test_requests_cut_at_a_stop_string_or_left_early_leave_no_handler_behind(engine):
    """transformers drops a request's result handler when it finishes; the batch cancels a request cut at a stop
    string or whose client left, and each kept its handler (and queue) for the life of the server."""
    serving = Serving(engine, DeployConfig())
    text = complete(serving, prompt="The river ran", max_tokens=12).choices[0].text
    stop = text[len(text) // 2:len(text) // 2 + 2]
    cut = complete(serving, prompt="The river ran", max_tokens=12, stop=[stop])
    assert cut.choices[0].text == text[:text.index(stop)] and cut.usage.completion_tokens < 12  # cancelled early

    async def leave_a_stream() -> None:
        stream = await create_completion(serving, CompletionRequest(prompt="The river ran", max_tokens=200,
                                                                    stream=True))
        await anext(aiter(stream))
        await stream.aclose()

    asyncio.run(leave_a_stream())
    router = engine.served[engine.default].manager.output_router
    assert router.result_handlers == {}
    assert complete(serving, prompt="next", max_tokens=2).usage.completion_tokens == 2
