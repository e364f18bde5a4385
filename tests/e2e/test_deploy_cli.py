"""`tunesmith deploy` through the console script, queried with the official `openai` client, on the real engine.

The base is the tiny random model with its output head untied and re-drawn: with tied embeddings a random model
greedily repeats its last input token ("\\n\\n\\n..."), which would make equality tests pass for the wrong reason.
Two random LoRA adapters (alpha, beta) are served beside it by one server for the module; the last test stops it
with SIGTERM. The server runs its engine in its own process (--engine-process true, deploy's default on a CUDA GPU):
the other deploy tests cover the engine in the server's process (the default on CPU). Most tests talk to alpha, the default: the transformers engine starts a continuous-batching loop per
served model, each sizing its KV cache from the machine's memory, so the tests start only that one; requests for
beta and the base ask for logprobs, which the engine answers on its plain generate() path.
"""

import asyncio
import http.client
import json
import signal
import socket
import time

import pytest

from e2e_cli import Server, request, run_cli, run_main, running

KEY = "test-key"
MAX_TOKENS = 12
CHAT = [{"role": "user", "content": "code for apple"}]


# -----------------------------------------------------------------------------
# A model whose greedy answers vary, and a server on it


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("models") / "tiny-untied"
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model.config.tie_word_embeddings = False
    torch.manual_seed(1)
    model.lm_head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(model_dir, tmp_path_factory):
    """Two random LoRA adapters in run folders (runs/NAME/final, config.yaml naming the base), as sft writes them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.templates import Template

    runs = tmp_path_factory.mktemp("runs")
    for seed, name in enumerate(("alpha", "beta"), start=1):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        lora = LoraConfig(r=4, lora_alpha=2, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
        final = runs / name / "final"
        get_peft_model(base, lora).save_pretrained(final)  # init_lora_weights=False: B is random too, not zero
        Template(AutoTokenizer.from_pretrained(model_dir)).save(final)
        (runs / name / "config.yaml").write_text(f"model: {model_dir}\n")
    return runs


@pytest.fixture(scope="module")
def template(adapters):
    from tunesmith.templates import Template

    return Template.load(adapters / "alpha" / "final")


@pytest.fixture(scope="module")
def infer_answer(adapters, tmp_path_factory):
    """`tunesmith infer` with the alpha adapter on CHAT, run before the server starts (each engine sizes its KV cache
    from the machine's memory, so two at once can run out of it); in this process (run_main): the server is the
    process under test here, infer's own process is tested in test_infer_export_data_cli.py."""
    folder = tmp_path_factory.mktemp("infer")
    (folder / "prompts.jsonl").write_text(json.dumps({"messages": CHAT}) + "\n")
    run_main("infer", "--adapters", adapters / "alpha" / "final", "--dataset", folder / "prompts.jsonl", "--output",
             folder / "answers.jsonl", "--generation.max-tokens", MAX_TOKENS, "--generation.temperature", 0,
             "--device", "cpu", "--dtype", "float32")
    return json.loads((folder / "answers.jsonl").read_text().splitlines()[0])


def metric(server: Server, name: str) -> float:
    text = request(server, "GET", "/metrics")[1]["text"]
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


@pytest.fixture(scope="module")
def server(model_dir, adapters, infer_answer, tmp_path_factory):
    with running("--model", model_dir, "--adapters", f"alpha={adapters / 'alpha' / 'final'}", adapters / "beta" / "final",
               "--api-key", KEY, "--max-body-bytes", 20_000, "--max-tokens-limit", 64, "--max-prompt-tokens", 300,
               "--device", "cpu", "--dtype", "float32", "--engine-process", "true",
               log=tmp_path_factory.mktemp("deploy") / "deploy.log") as s:
        yield s


@pytest.fixture(scope="module")
def name():
    return "alpha"  # the default model: the first adapter


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def greedy(client, name, messages=CHAT, **kw):
    return client.chat.completions.create(model=name, messages=messages, max_tokens=kw.pop("max_tokens", MAX_TOKENS),
                                          temperature=0, **kw)


# -----------------------------------------------------------------------------
# Answers


def test_startup_prints_the_url_models_and_openai_snippet(server, client, model_dir):
    out = server.output()
    names = ["alpha", "beta", model_dir.name]
    assert f"serving at {server.url}/v1" in out and f"models: {', '.join(names)}" in out
    assert f'client = OpenAI(base_url="{server.url}/v1"' in out and 'model="alpha"' in out
    assert "event loop: uvloop, HTTP parser: httptools" in out  # the serve extra's faster pair is what answers
    assert "engine: its own process (pid " in out  # --engine-process true
    assert [m.id for m in client.models.list()] == names


def test_each_adapter_answers_with_its_own_weights(client, name, model_dir):
    """The request's model picks the adapter: three different greedy answers from one server. (logprobs: see the
    module docstring; alpha's answer must not depend on the engine path that produced it.)"""
    answers = {}
    for model in ("alpha", "beta", model_dir.name):
        reply = greedy(client, model, logprobs=True, top_logprobs=2)
        assert reply.model == model and reply.usage.completion_tokens == MAX_TOKENS
        content = reply.choices[0].logprobs.content
        assert len(content) == MAX_TOKENS and all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)
        answers[model] = reply.choices[0].message.content
    assert len(set(answers.values())) == 3
    assert answers["alpha"] == greedy(client, "alpha").choices[0].message.content


def test_chat_plain_and_streamed_agree_and_usage_counts_tokens(client, name, template):
    reply = greedy(client, name)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "length" and choice.message.content
    assert reply.usage.prompt_tokens == len(template.render_prompt(CHAT))
    assert reply.usage.completion_tokens == MAX_TOKENS
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + MAX_TOKENS

    chunks = list(greedy(client, name, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage == reply.usage


def test_greedy_answer_equals_tunesmith_infer(client, name, infer_answer):
    reply = greedy(client, name)
    assert reply.choices[0].message.content == infer_answer["response"]
    assert reply.usage.completion_tokens == infer_answer["completion_tokens"]


def test_completions_plain_and_streamed(client, name, template):
    prompt = "The river ran past the stone"
    reply = client.completions.create(model=name, prompt=prompt, max_tokens=8, temperature=0)
    assert reply.choices[0].text and reply.choices[0].finish_reason == "length"
    assert reply.usage.prompt_tokens == len(template.tokenizer(prompt)["input_ids"])
    assert reply.usage.completion_tokens == 8
    streamed = client.completions.create(model=name, prompt=prompt, max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reply.choices[0].text
    # several prompts stream together, choice i of the stream = choice i of the whole answer
    prompts = [prompt, "Once upon a time"]
    whole = client.completions.create(model=name, prompt=prompts, max_tokens=8, temperature=0)
    texts = {}
    for chunk in client.completions.create(model=name, prompt=prompts, max_tokens=8, temperature=0, stream=True):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {c.index: c.text for c in whole.choices} and texts[0] == reply.choices[0].text


def tokens_and_offsets(client, name) -> tuple[str, list[str], list[int]]:
    """The greedy answer, its tokens' texts (from logprobs) and where each token starts in it."""
    reply = greedy(client, name, logprobs=True)
    tokens = [t.token for t in reply.choices[0].logprobs.content]
    offsets = [sum(len(t) for t in tokens[:k]) for k in range(len(tokens))]
    full = reply.choices[0].message.content
    assert full == "".join(tokens) and full == greedy(client, name).choices[0].message.content
    return full, tokens, offsets


def test_stop_sequence_cuts_the_answer_where_it_first_appears(client, name):
    full, tokens, offsets = tokens_and_offsets(client, name)
    k = next(k for k in range(3, len(tokens)) if tokens[k].strip() and full.find(tokens[k]) == offsets[k])
    cut = greedy(client, name, stop=[tokens[k], "never appears"]).choices[0]
    assert cut.finish_reason == "stop" and cut.message.content == full[: offsets[k]]
    streamed = greedy(client, name, stop=tokens[k], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == full[: offsets[k]]


def test_stop_sequence_spanning_two_tokens_leaves_none_of_it_in_the_answer(client, name):
    full, tokens, offsets = tokens_and_offsets(client, name)
    k = next(k for k in range(3, len(tokens) - 1)
             if (stop := tokens[k][-1] + tokens[k + 1][0]).strip() and full.find(stop) == offsets[k + 1] - 1)
    cut = greedy(client, name, stop=[tokens[k][-1] + tokens[k + 1][0]]).choices[0]
    assert cut.finish_reason == "stop" and cut.message.content == full[: offsets[k + 1] - 1]


def test_n_choices_each_get_their_tokens_counted(client, name):
    reply = client.chat.completions.create(model=name, messages=CHAT, max_tokens=6, temperature=1.0, n=3)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.finish_reason == "length" for c in reply.choices)
    assert reply.usage.completion_tokens == 3 * 6
    same = greedy(client, name, n=2, max_tokens=6)
    assert same.choices[0].message.content == same.choices[1].message.content


# -----------------------------------------------------------------------------
# Bad requests: the right 4xx, in OpenAI's shape, and the server keeps answering


def post(server, body, headers=None, raw: bytes | None = None):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **(headers or {})}
    return request(server, "POST", "/v1/chat/completions", raw if raw is not None else json.dumps(body).encode(), headers)


@pytest.mark.parametrize("case, status", [
    ("missing messages", 400), ("messages not a list", 400), ("temperature not a number", 400),
    ("negative max_tokens", 400), ("max_tokens over the limit", 400), ("prompt too long", 400),
    ("malformed JSON", 400), ("unknown model", 404), ("oversized body", 413), ("no API key", 401),
    ("wrong API key", 401),
])
def test_bad_request_gets_its_4xx_and_the_server_still_answers(server, client, name, case, status):
    good = {"model": name, "messages": CHAT, "max_tokens": 2}
    code, body = {
        "missing messages": lambda: post(server, {"model": name}),
        "messages not a list": lambda: post(server, {**good, "messages": "hi"}),
        "temperature not a number": lambda: post(server, {**good, "temperature": "hot"}),
        "negative max_tokens": lambda: post(server, {**good, "max_tokens": -5}),
        "max_tokens over the limit": lambda: post(server, {**good, "max_tokens": 65}),
        "prompt too long": lambda: post(server, {**good, "messages": [{"role": "user", "content": "word " * 400}]}),
        "malformed JSON": lambda: post(server, None, raw=b'{"model": "x", "messages": [}'),
        "unknown model": lambda: post(server, {**good, "model": "gpt-nothing"}),
        "oversized body": lambda: post(server, {**good, "messages": [{"role": "user", "content": "x" * 30_000}]}),
        "no API key": lambda: request(server, "POST", "/v1/chat/completions", json.dumps(good).encode(),
                                      {"Content-Type": "application/json"}),
        "wrong API key": lambda: post(server, good, headers={"Authorization": "Bearer nope"}),
    }[case]()
    assert code == status, body
    assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]
    if case == "prompt too long":
        assert "(300 tokens)" in body["error"]["message"]
    assert greedy(client, name, max_tokens=2).choices[0].finish_reason == "length"


@pytest.mark.parametrize("body", [{"prompt": ""}, {"prompt": "hi", "temperature": 1e-40}])
def test_requests_that_stopped_the_generation_loop_are_answered_and_so_is_the_next(server, client, name, body):
    body = json.dumps({"model": name, "max_tokens": 3, **body}).encode()
    code, reply = request(server, "POST", "/v1/completions", body, {"Authorization": f"Bearer {KEY}",
                                                                    "Content-Type": "application/json"})
    assert code == 200 and reply["usage"]["completion_tokens"] == 3, reply
    assert greedy(client, name, max_tokens=2).choices[0].finish_reason == "length"
    assert request(server, "GET", "/health")[1] == {"status": "ok"}


def test_sdk_raises_its_typed_errors(client, name):
    import openai

    with pytest.raises(openai.NotFoundError):
        greedy(client, "gpt-nothing")
    with pytest.raises(openai.BadRequestError):
        greedy(client, name, max_tokens=-1)
    with pytest.raises(openai.AuthenticationError):
        greedy(client.with_options(api_key="wrong"), name)


# -----------------------------------------------------------------------------
# Load, disconnects, shutdown


def test_16_concurrent_streams_all_complete_with_their_token_counts(server, name):
    from openai import AsyncOpenAI

    async def one(client, i):
        stream = await client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": f"question number {i}"}], max_tokens=8, temperature=0,
            stream=True, stream_options={"include_usage": True})
        text, finish, usage = "", None, None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            usage = chunk.usage or usage
        return text, finish, usage

    async def many():
        async with AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300) as client:
            return await asyncio.gather(*[one(client, i) for i in range(16)])

    results = asyncio.run(many())
    assert len(results) == 16
    for text, finish, usage in results:
        assert finish == "length" and usage.completion_tokens == 8 and text
    assert metric(server, "tunesmith_requests_running") == 0 and metric(server, "tunesmith_requests_waiting") == 0


def test_bench_serve_loads_the_running_server_and_reports_what_it_served(server, model_dir, tmp_path):
    before = metric(server, "tunesmith_generated_tokens_total")
    table = tmp_path / "bench.md"
    out = run_cli("bench", "serve", "--url", server.url, "--api-key", KEY, "--concurrency", 1, 3, "--rounds", 1,
                  "--max-tokens", 8, "--prompt-tokens", 40, "--model", model_dir, "--out", table).stdout
    for streams in (1, 3):  # each level's line: the answers' length as the server counted it
        assert f"c={streams} " in out and "(8 tok/answer" in out.split(f"c={streams} ")[1].splitlines()[0]
    rows = [row for row in table.read_text().splitlines() if row.startswith(f"| {server.url} |")]
    assert [row.split("|")[2].strip() for row in rows] == ["1", "3"]
    # the warm-up request, then 1 and 3 streams of one request each, 8 tokens apiece
    assert metric(server, "tunesmith_generated_tokens_total") - before == 8 * (1 + 1 + 3)
    refused = run_main("bench", "serve", "--url", server.url, "--concurrency", 1, check=False)  # no key: refused
    assert refused.returncode != 0 and "--api-key" in refused.stderr


def test_client_disconnecting_mid_stream_stops_its_generation(server, name):
    before = metric(server, "tunesmith_generated_tokens_total")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps(
        {"model": name, "messages": CHAT, "max_tokens": 64, "stream": True}).encode(),
        {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    response = conn.getresponse()
    lines = 0
    while lines < 3:  # the role chunk and two tokens, then the client goes away
        lines += response.readline().startswith(b"data: ")
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    deadline = time.time() + 20
    while metric(server, "tunesmith_requests_running") + metric(server, "tunesmith_requests_waiting") and time.time() < deadline:
        time.sleep(0.1)
    assert metric(server, "tunesmith_requests_running") == 0
    assert metric(server, "tunesmith_generated_tokens_total") - before < 64  # it did not run to max_tokens


def test_sigterm_drains_new_requests_get_503_the_running_one_finishes_then_exits_0(server, name):
    """Last in the module: it stops the shared server. A load balancer's next request must get a 503 it can act on
    (Retry-After), not a refused connection, while the request already running finishes."""
    body = json.dumps({"model": name, "messages": CHAT, "max_tokens": 48, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    in_flight = socket.create_connection(("127.0.0.1", server.port), timeout=120)
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\nContent-Type: "
            f"application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    in_flight.sendall(head.encode() + body[:20])
    time.sleep(1)  # the server has read the headers: the request runs, waiting for the rest of its body
    server.proc.send_signal(signal.SIGTERM)
    deadline = time.time() + 20
    while request(server, "GET", "/health", timeout=5)[0] != 503:
        assert time.time() < deadline, "no drain after SIGTERM"
        time.sleep(0.1)
    assert request(server, "GET", "/health")[1] == {"status": "draining"}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/v1/chat/completions", json.dumps({"model": name, "messages": CHAT}).encode(),
                 {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    refused = conn.getresponse()
    assert refused.status == 503 and refused.getheader("Retry-After") == "5"
    assert json.loads(refused.read())["error"]["code"] == "shutting_down"
    conn.close()

    in_flight.sendall(body[20:])
    with in_flight.makefile("rb") as answer:
        assert answer.readline().startswith(b"HTTP/1.1 200")
        events = [line.rstrip(b"\r\n") for line in answer if line.startswith(b"data: ")]
    in_flight.close()
    assert events[-1] == b"data: [DONE]" and json.loads(events[-2][6:])["usage"]["completion_tokens"] == 48
    assert server.proc.wait(90) == 0
    assert "closing the engine" in server.output()
    with pytest.raises(OSError):
        request(server, "GET", "/health", timeout=5)
