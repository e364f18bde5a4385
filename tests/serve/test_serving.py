"""serving.py, chat.py and completion.py on a scripted engine, no HTTP: request mapping, limits, usage, n>1, the SSE
sequence, tool calls, errors."""

import asyncio
import json

import pytest
from scripted_engine import ScriptedEngine

from tunesmith.config import DeployConfig
from tunesmith.errors import ConfigError
from tunesmith.serve.protocol import ChatCompletionRequest, CompletionRequest
from tunesmith.serve.chat import create_chat_completion
from tunesmith.serve.completion import create_completion
from tunesmith.serve.errors import APIError
from tunesmith.serve.serving import EventStream, Serving

USER = [{"role": "user", "content": "say hello"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def serve(engine=None, **cfg):
    return Serving(engine or ScriptedEngine(), DeployConfig(**cfg))


def chat(serving, **body):
    return asyncio.run(create_chat_completion(serving, request(**body)))


def request(**body) -> ChatCompletionRequest:
    return ChatCompletionRequest(**{"model": "base", "messages": USER, **body})


def events(serving, **body) -> list:
    """The streamed chat answer as parsed chunks, [DONE] kept as the string."""

    async def go():
        stream = await create_chat_completion(serving, request(stream=True, **body))
        try:
            return [line async for line in stream]
        finally:
            await stream.aclose()

    lines = asyncio.run(go())
    assert all(line.startswith("data: ") and line.endswith("\n\n") for line in lines)
    return [line[6:-2] if line == "data: [DONE]\n\n" else json.loads(line[6:-2]) for line in lines]


# -----------------------------------------------------------------------------
# Request -> GenerationRequest


def test_chat_request_becomes_the_generation_request_the_engine_sees():
    engine = ScriptedEngine()
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "weather"}, {"type": "text", "text": "in Oslo?"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    chat(serve(engine), model="prd", messages=messages, tools=TOOLS, max_tokens=99, max_completion_tokens=7,
         temperature=0.3, top_p=0.9, stop="END", seed=5, n=2)
    req = engine.requests[0]
    assert req.model == "prd" and req.prompt is None and req.tools == TOOLS
    assert req.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather\nin Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
    ]
    p = req.params
    assert (p.max_tokens, p.temperature, p.top_p, p.stop, p.seed, p.n) == (7, 0.3, 0.9, ["END"], 5, 2)


def test_each_prompt_is_rendered_once_and_generated_from_those_ids():
    engine = ScriptedEngine()
    chat(serve(engine, max_prompt_tokens=100))
    events(serve(engine))
    asyncio.run(create_completion(serve(engine), CompletionRequest(model="base", prompt=["a b", "c d e"])))
    assert engine.renders == 4  # one chat, one stream, two prompts: the limit check and the engine share the ids
    assert [len(r.prompt_ids) for r in engine.requests] == [5, 5, 2, 3]


def test_left_out_parameters_come_from_the_deploy_configs_generation_section():
    engine = ScriptedEngine()
    generation = {"max_tokens": 5000, "temperature": 0.7, "top_p": 0.8, "stop": ["###"], "seed": 11}
    chat(serve(engine, generation=generation, max_tokens_limit=64))
    p = engine.requests[0].params
    assert (p.max_tokens, p.temperature, p.top_p, p.stop, p.seed, p.n) == (64, 0.7, 0.8, ["###"], 11, 1)
    chat(serve(engine, generation=generation), stop=["a", "b"], temperature=0)
    assert engine.requests[1].params.stop == ["a", "b"] and engine.requests[1].params.temperature == 0


def test_stop_sequences_pass_through_and_end_the_answer_with_finish_reason_stop():
    engine = ScriptedEngine(["one", " two", " three", " four"])
    full = chat(serve(engine), max_tokens=10)
    cut = chat(serve(engine), max_tokens=10, stop=[" thr"])
    assert full.choices[0].message.content == "one two three four"
    assert cut.choices[0].message.content == "one two" and cut.choices[0].finish_reason == "stop"
    short = chat(serve(engine), max_tokens=2)
    assert short.choices[0].message.content == "one two" and short.choices[0].finish_reason == "length"


def test_n_choices_are_numbered_and_usage_sums_their_tokens():
    engine = ScriptedEngine([["a", "b", "c"], ["x", "y"]])
    reply = chat(serve(engine), n=2)
    assert [(c.index, c.message.content) for c in reply.choices] == [(0, "abc"), (1, "xy")]
    prompt = engine.count_prompt_tokens(engine.requests[0])
    assert reply.usage.model_dump() == {"prompt_tokens": prompt, "completion_tokens": 5, "total_tokens": prompt + 5}
    assert reply.id.startswith("chatcmpl-") and reply.model == "base" and reply.object == "chat.completion"


def test_served_model_name_renames_the_default_model():
    engine = ScriptedEngine()
    serving = serve(engine, served_model_name="assistant")
    assert [m.id for m in serving.models().data] == ["assistant", "prd"]
    reply = chat(serving, model="assistant")
    assert reply.model == "assistant" and engine.requests[0].model == "base"
    with pytest.raises(APIError) as err:
        chat(serving, model="base")
    assert err.value.status == 404


def test_served_model_name_renames_the_base_beside_named_adapters():
    """As vLLM's flag: with --model, the base takes the name and the adapters keep theirs (it renamed the first
    adapter, so `banana` answered 404 and the new name answered with the adapter)."""
    engine = ScriptedEngine(names=("banana", "smol"))  # the engines list adapters first, the base last
    serving = serve(engine, model="models/smol", adapters=["banana=runs/banana/final"], served_model_name="base")
    assert [m.id for m in serving.models().data] == ["banana", "base"]
    assert chat(serving, model="banana").model == "banana" and engine.requests[-1].model == "banana"
    assert chat(serving, model="base").model == "base" and engine.requests[-1].model == "smol"
    # without --model the default adapter takes it, unless NAME=PATH named it already
    assert [m.id for m in serve(ScriptedEngine(names=("tuned",)), adapters=["runs/tuned/final"],
                                served_model_name="prd").models().data] == ["prd"]
    with pytest.raises(ConfigError, match="the adapter you named 'banana'"):
        serve(ScriptedEngine(names=("banana",)), adapters=["banana=runs/banana/final"], served_model_name="x")
    with pytest.raises(ConfigError, match="'banana' already names another served model"):
        serve(engine, model="models/smol", adapters=["banana=runs/banana/final"], served_model_name="banana")


def test_an_adapter_named_as_the_base_is_refused_before_weights_load(tmp_path):
    from tunesmith.infer import load_engine

    with pytest.raises(ConfigError, match="'smollm2-135m-instruct' is also the name --model smollm2-135m-instruct is "
                                          "served under"):
        load_engine("transformers", "smollm2-135m-instruct", {"smollm2-135m-instruct": str(tmp_path / "missing")})


def test_logprobs_are_returned_in_openais_shape():
    reply = chat(serve(), logprobs=True, top_logprobs=2)
    content = reply.choices[0].logprobs.content
    assert [t.token for t in content] == ["Hello", " there", "!"]
    assert content[0].bytes == list(b"Hello") and [t.token for t in content[0].top_logprobs] == ["Hello", "x"]
    assert chat(serve()).choices[0].logprobs is None


# -----------------------------------------------------------------------------
# Streaming


def test_stream_sends_role_first_then_content_then_finish_then_done():
    chunks = events(serve())
    assert chunks[-1] == "[DONE]"
    chunks = chunks[:-1]
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                     "finish_reason": None}]
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]] == ["Hello", " there", "!"]
    assert chunks[-1]["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]


def test_stream_usage_chunk_when_asked_and_n_choices_each_get_role_and_finish():
    engine = ScriptedEngine([["a", "b", "c"], ["x", "y"]])
    chunks = events(serve(engine), n=2, stream_options={"include_usage": True})[:-1]
    usage = chunks[-1]
    prompt = engine.count_prompt_tokens(engine.requests[0])
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": prompt, "completion_tokens": 5,
                                                         "total_tokens": prompt + 5}
    assert all(c["usage"] is None for c in chunks[:-1])
    for i, text in ((0, "abc"), (1, "xy")):
        mine = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["index"] == i]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["delta"].get("content", "") for c in mine) == text
        assert mine[-1]["finish_reason"] == "stop" and [c["finish_reason"] for c in mine[:-1]] == [None] * (len(mine) - 1)


def test_engine_failure_mid_stream_sends_an_error_chunk_then_done_and_frees_the_slot():
    serving = serve(ScriptedEngine(fail_at=2))
    chunks = events(serving)
    assert chunks[-1] == "[DONE]"
    assert chunks[-2]["error"]["type"] == "server_error" and "scripted failure" in chunks[-2]["error"]["message"]
    assert serving.active == 0
    assert serving.metrics.running._value.get() == 0 and serving.metrics.waiting._value.get() == 0


def test_engine_failure_before_the_first_token_is_a_500():
    serving = serve(ScriptedEngine(fail_at=0))
    for stream in (False, True):
        with pytest.raises(APIError) as err:
            chat(serving, stream=stream)
        assert err.value.status == 500 and err.value.body()["error"]["type"] == "server_error"
    assert serving.active == 0


def test_closing_a_stream_early_stops_the_engine_and_frees_the_slot():
    engine = ScriptedEngine(["tok"] * 50, delay=0.001)
    serving = serve(engine, max_concurrent=1)

    async def go():
        stream = await create_chat_completion(serving, request(stream=True, max_tokens=50))
        assert isinstance(stream, EventStream)
        it = stream.__aiter__()
        for _ in range(4):  # role chunk and a few tokens, then the client goes away
            await anext(it)
        assert engine.open_streams == 1 and serving.active == 1
        await stream.aclose()
        return engine.open_streams, serving.active

    assert asyncio.run(go()) == (0, 0)
    assert serving.metrics.generated_tokens.labels("base")._value.get() == 3


# -----------------------------------------------------------------------------
# Tool calls


def test_hermes_tool_call_is_parsed_into_tool_calls():
    engine = ScriptedEngine(["Let me check.", "<tool_call>", '{"name": "get_weather", ', '"arguments": {"city": "Oslo"}}',
                             "</tool_call>"])
    choice = chat(serve(engine), tools=TOOLS).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}


def test_llama3_tool_call_is_parsed_into_tool_calls():
    engine = ScriptedEngine(['<|python_tag|>{"name": "get_weather", ', '"parameters": {"city": "Oslo"}}'])
    choice = chat(serve(engine), tools=TOOLS).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Oslo"}


def test_plain_text_with_tools_offered_stays_text_and_tool_choice_none_sends_no_tools():
    engine = ScriptedEngine(['{"answer": 42}'])
    choice = chat(serve(engine), tools=TOOLS).choices[0]  # JSON, but not one of the tools: an answer
    assert choice.finish_reason == "stop" and choice.message.content == '{"answer": 42}' and choice.message.tool_calls is None
    engine = ScriptedEngine(['<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>'])
    choice = chat(serve(engine), tools=TOOLS, tool_choice="none").choices[0]
    assert engine.requests[0].tools is None and choice.finish_reason == "stop" and choice.message.tool_calls is None


def test_streamed_tool_call_holds_the_call_back_and_sends_it_as_tool_calls():
    engine = ScriptedEngine(["Checking", " now.", "<tool", "_call>", '{"name": "get_weather", "arguments": {"city": "Oslo"}}',
                             "</tool_call>"])
    chunks = events(serve(engine), tools=TOOLS)[:-1]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("content", "") for d in deltas) == "Checking now."
    calls = [d["tool_calls"] for d in deltas if "tool_calls" in d]
    assert len(calls) == 1 and calls[0][0]["index"] == 0 and calls[0][0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0][0]["function"]["arguments"]) == {"city": "Oslo"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_streamed_plain_text_with_tools_offered_arrives_whole():
    engine = ScriptedEngine(["  ", "{not json", " at all} and <tool", "box> done"])
    chunks = events(serve(engine), tools=TOOLS)[:-1]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "  {not json at all} and <toolbox> done"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


# -----------------------------------------------------------------------------
# Limits and errors


def test_unknown_model_is_404_naming_the_served_ones():
    with pytest.raises(APIError) as err:
        chat(serve(), model="nope")
    assert err.value.status == 404 and err.value.code == "model_not_found" and "base, prd" in err.value.message


def test_max_tokens_over_the_limit_is_400_naming_both_numbers():
    with pytest.raises(APIError) as err:
        chat(serve(max_tokens_limit=100), max_tokens=101)
    assert err.value.status == 400 and err.value.param == "max_tokens"
    assert "101" in err.value.message and "100" in err.value.message


def test_prompt_over_max_prompt_tokens_is_400_naming_both_numbers():
    serving = serve(max_prompt_tokens=4)
    with pytest.raises(APIError) as err:
        chat(serving, messages=[{"role": "user", "content": "one two three four five"}])
    assert err.value.status == 400 and "is 8 tokens" in err.value.message and "(4 tokens)" in err.value.message
    assert serving.active == 0


def test_prompt_that_fills_the_context_is_400_naming_the_limit_and_its_length():
    serving = serve(ScriptedEngine(context=10))
    with pytest.raises(APIError) as err:
        chat(serving, messages=[{"role": "user", "content": "one two three four five six seven"}])  # 10 tokens
    assert err.value.status == 400 and err.value.code == "context_length_exceeded" and err.value.param == "messages"
    assert "maximum context length is 10 tokens" in err.value.message and "resulted in 10 tokens" in err.value.message
    assert serving.active == 0


def test_prompt_and_asked_max_tokens_beyond_the_context_is_400_and_a_default_max_tokens_shrinks_to_fit():
    engine = ScriptedEngine(["a"] * 20, context=10)  # "say hello" is 5 tokens: 5 more fit, 6 do not
    assert chat(serve(engine), max_tokens=5).usage.completion_tokens == 5
    with pytest.raises(APIError) as err:
        chat(serve(engine), max_completion_tokens=6)
    assert err.value.status == 400 and err.value.param == "max_completion_tokens"
    assert err.value.code == "context_length_exceeded" and "max_completion_tokens <= 5" in err.value.message
    reply = chat(serve(engine, generation={"max_tokens": 100}))
    assert engine.requests[-1].params.max_tokens == 5 and reply.choices[0].finish_reason == "length"


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": "bad \ud800 text"}]}, "messages[0].content"),
    ({"stop": ["ok", "\udc00"]}, "stop[1]"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"x": "\ud800"}}}]},
     "tools[0].function.parameters.x"),
])
def test_text_that_is_not_unicode_is_400_naming_the_field(body, param):
    engine = ScriptedEngine()
    with pytest.raises(APIError) as err:
        chat(serve(engine), **body)
    assert err.value.status == 400 and err.value.param == param and "lone surrogate" in err.value.message
    assert engine.requests == []


def test_any_integer_seed_reaches_the_engine_as_an_int64():
    engine = ScriptedEngine()
    chat(serve(engine), seed=2**70 + 5)
    chat(serve(engine), seed=-1)
    assert [r.params.seed for r in engine.requests] == [(2**70 + 5) % 2**63, 2**63 - 1]


def test_more_than_max_concurrent_is_429_with_retry_after():
    serving = serve(ScriptedEngine(["a"] * 20), max_concurrent=1)

    async def go():
        held = await create_chat_completion(serving, request(stream=True, max_tokens=20))
        with pytest.raises(APIError) as err:
            await create_chat_completion(serving, request())
        await held.aclose()
        after = await create_chat_completion(serving, request())
        return err.value, after

    err, after = asyncio.run(go())
    assert err.status == 429 and err.headers["Retry-After"] == "1"
    assert after.choices[0].message.content == "a" * 20


@pytest.mark.parametrize("body, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}},
     "response_format"),  # a schema the grammar cannot take (json_object and json_schema are served)
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": TOOLS}, "tool_choice"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages[0].content"),
    ({"messages": [{"role": "assistant", "content": None}]}, "messages[0].content"),
])
def test_what_is_not_supported_is_400_naming_the_parameter(body, param):
    with pytest.raises(APIError) as err:
        chat(serve(), **body)
    assert err.value.status == 400 and err.value.param == param
    assert set(err.value.body()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("stream", [None, False])
def test_stream_options_without_stream_is_400_naming_stream_options_as_openai_answers(stream):
    body = {"stream_options": {"include_usage": True}, **({} if stream is None else {"stream": stream})}
    refusals = []
    for create, req in ((create_chat_completion, request(**body)),
                        (create_completion, CompletionRequest(model="base", prompt="x", **body))):
        with pytest.raises(APIError) as err:
            asyncio.run(create(serve(), req))
        refusals.append(err.value.body()["error"])
    for error in refusals:
        assert error["type"] == "invalid_request_error" and error["param"] == "stream_options"
        assert "only allowed when stream is true" in error["message"]
    assert chat(serve(), stream_options=None, stream=stream).choices[0].message.content == "Hello there!"


def test_response_format_text_is_fine():
    assert chat(serve(), response_format={"type": "text"}).choices[0].message.content == "Hello there!"


# -----------------------------------------------------------------------------
# Completions


def test_completion_maps_prompt_echo_n_and_several_prompts():
    engine = ScriptedEngine(["A", "B"])
    serving = serve(engine)
    reply = asyncio.run(create_completion(serving, CompletionRequest(model="prd", prompt="one two", max_tokens=5,
                                                                     echo=True, stop=["Z"])))
    assert engine.requests[0].prompt == "one two" and engine.requests[0].messages is None
    assert engine.requests[0].params.stop == ["Z"] and engine.requests[0].model == "prd"
    assert reply.object == "text_completion" and reply.choices[0].text == "one twoAB"
    assert reply.usage.prompt_tokens == 2 and reply.usage.completion_tokens == 2
    several = asyncio.run(create_completion(serving, CompletionRequest(model="base", prompt=["p one", "p two three"],
                                                                       n=2)))
    assert [c.index for c in several.choices] == [0, 1, 2, 3]
    assert several.usage.prompt_tokens == 5 and several.usage.completion_tokens == 8


def streamed(started) -> list[dict]:
    """The parsed chunks of the SSE stream that `started` (a create_... coroutine) answers, after checking its [DONE]."""

    async def go():
        stream = await started
        try:
            return [line async for line in stream]
        finally:
            await stream.aclose()

    lines = asyncio.run(go())
    assert lines[-1] == "data: [DONE]\n\n"
    return [json.loads(line[6:]) for line in lines[:-1]]


def test_completion_stream_and_logprobs():
    serving = serve(ScriptedEngine(["A", "B"]))

    chunks = streamed(create_completion(serving, CompletionRequest(model="base", prompt="x", stream=True, logprobs=1,
                                                                   stream_options={"include_usage": True})))
    assert [c["choices"][0]["text"] for c in chunks[:-1]] == ["A", "B", ""]
    assert chunks[0]["choices"][0]["logprobs"] == {"tokens": ["A"], "token_logprobs": [-0.5],
                                                   "top_logprobs": [{"A": -0.5}], "text_offset": [0]}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2


def test_completion_streams_several_prompts_numbered_as_when_whole():
    # the openai SDK's completions.create(prompt=[...], stream=True): OpenAI streams every prompt's choices, prompt
    # p's numbered p*n ... p*n + n-1, as the whole answer numbers them
    serving = serve(ScriptedEngine(["A", "B"]))
    body = {"model": "base", "prompt": ["p one", "p two three"], "n": 2, "echo": True}
    whole = asyncio.run(create_completion(serving, CompletionRequest(**body)))

    chunks = streamed(create_completion(serving, CompletionRequest(**body, stream=True,
                                                                   stream_options={"include_usage": True})))
    texts, finished = {}, {}
    for c in chunks[:-1]:
        (choice,) = c["choices"]
        texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
        if choice["finish_reason"]:
            finished[choice["index"]] = choice["finish_reason"]
    assert texts == {c.index: c.text for c in whole.choices} and sorted(finished) == [0, 1, 2, 3]
    assert chunks[-1]["usage"] == whole.usage.model_dump()


def test_completion_of_an_empty_prompt_starts_from_the_start_of_text():
    engine = ScriptedEngine(["A"])
    reply = asyncio.run(create_completion(serve(engine), CompletionRequest(prompt="", max_tokens=3)))
    assert reply.choices[0].text == "A" and engine.requests[0].prompt_ids == [0]


@pytest.mark.parametrize("body", [{"prompt": [1, 2, 3]}, {"prompt": "x", "suffix": "y"},
                                  {"prompt": "x", "best_of": 3},
                                  {"prompt": "x", "echo": True, "logprobs": 1}])
def test_completion_refuses_what_it_cannot_do(body):
    with pytest.raises(APIError) as err:
        asyncio.run(create_completion(serve(), CompletionRequest(model="base", **body)))
    assert err.value.status == 400
