"""POST /v1/messages (Anthropic's Messages API, serve/messages.py) through the official `anthropic` SDK, in process
(its http_client is the app's TestClient): the same engine and template as /v1/chat/completions give the same
answer, whole and streamed; a last assistant message is a prefill; what is not served is a 400 naming it; guardrails
and versions apply as on the OpenAI routes."""

import pytest
from fastapi.testclient import TestClient
from scripted_engine import ScriptedEngine

from tunesmith.config import DeployConfig
from tunesmith.infer import load_engine
from tunesmith.serve.app import build_app

anthropic = pytest.importorskip("anthropic")
SYSTEM, USER = "You draft DAO proposals.", "Fund a security audit."


def sdk(app):
    return anthropic.Anthropic(base_url="http://testserver", api_key="none", http_client=TestClient(app),
                               max_retries=0)


def test_same_answer_as_chat_completions_whole_and_streamed(tiny_model):
    engine = load_engine("transformers", model=str(tiny_model), device="cpu", dtype="float32", kv_cache_gib=0.25)
    app = build_app(engine, DeployConfig())
    with TestClient(app) as http:
        chat = http.post("/v1/chat/completions", json={"max_tokens": 8, "temperature": 0, "messages": [
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]}).json()
        client = anthropic.Anthropic(base_url="http://testserver", api_key="none", http_client=http, max_retries=0)
        greedy = {"temperature": 0}  # this SDK release sends sampling settings as extra fields only
        reply = client.messages.create(model=chat["model"], max_tokens=8, system=SYSTEM, extra_body=greedy,
                                       messages=[{"role": "user", "content": USER}])
        assert reply.content[0].text == chat["choices"][0]["message"]["content"]
        assert reply.stop_reason == {"stop": "end_turn", "length": "max_tokens"}[chat["choices"][0]["finish_reason"]]
        assert reply.usage.input_tokens == chat["usage"]["prompt_tokens"] and reply.usage.output_tokens == 8
        with client.messages.stream(model=chat["model"], max_tokens=8, system=SYSTEM, extra_body=greedy,
                                    messages=[{"role": "user", "content": [{"type": "text", "text": USER}]}]) as s:
            assert s.get_final_text() == reply.content[0].text
            assert s.get_final_message().stop_reason == reply.stop_reason
        # a stop sequence inside that answer ends it there, and the batching engine says which one did
        text = reply.content[0].text
        stop = text[len(text) // 2:len(text) // 2 + 2]
        for stream in (False, True):
            body = {"model": chat["model"], "max_tokens": 8, "messages": [{"role": "user", "content": USER}],
                    "system": SYSTEM, "stop_sequences": [stop], "extra_body": greedy}
            if stream:
                with client.messages.stream(**body) as s:
                    cut = s.get_final_message()
            else:
                cut = client.messages.create(**body)
            assert cut.content[0].text == text[:text.index(stop)]
            assert (cut.stop_reason, cut.stop_sequence) == ("stop_sequence", stop)
    from tunesmith.infer import GenerationRequest

    turn = [{"role": "user", "content": USER}]
    prefilled = engine.prompt_ids(GenerationRequest(messages=turn, assistant_prefix="Sure: the audit"))
    tokenizer = engine.template_for(None).tokenizer
    assert prefilled == engine.prompt_ids(GenerationRequest(messages=turn)) + tokenizer(
        "Sure: the audit", add_special_tokens=False)["input_ids"]  # the answer continues the prefill


def test_count_tokens_equals_the_input_tokens_messages_reports_for_the_same_request(tiny_model):
    engine = load_engine("transformers", model=str(tiny_model), device="cpu", dtype="float32", kv_cache_gib=0.25)
    with TestClient(build_app(engine, DeployConfig())) as http:
        client = anthropic.Anthropic(base_url="http://testserver", api_key="none", http_client=http, max_retries=0)
        asked = [{"messages": [{"role": "user", "content": USER}]},
                 {"system": SYSTEM, "messages": [{"role": "user", "content": USER}]},
                 {"system": [{"type": "text", "text": SYSTEM}], "messages": [  # a prefill counts as prompt too
                     {"role": "user", "content": [{"type": "text", "text": USER}]},
                     {"role": "assistant", "content": "Sure: the audit"}]}]
        counts = []
        for body in asked:
            counted = client.messages.count_tokens(model="tiny-llama", **body).input_tokens
            reply = client.messages.create(model="tiny-llama", max_tokens=1, **body)
            assert counted == reply.usage.input_tokens
            counts.append(counted)
        # the system prompt (SmolLM2's template writes its own when there is none) and the prefill are counted
        assert counts[0] != counts[1] < counts[2]
        with pytest.raises(anthropic.BadRequestError) as err:
            client.messages.count_tokens(model="tiny-llama", messages=[{"role": "user", "content": USER}],
                                         tools=[{"name": "x", "input_schema": {"type": "object"}}])
        assert err.value.body["error"]["param"] == "tools"  # refused by name, as /v1/messages refuses it
        with pytest.raises(anthropic.NotFoundError):
            client.messages.count_tokens(model="nope", messages=[{"role": "user", "content": USER}])


def test_prefill_system_blocks_and_what_is_refused():
    engine = ScriptedEngine(pieces=["Hello", " there"])
    client = sdk(build_app(engine, DeployConfig()))
    reply = client.messages.create(model="base", max_tokens=5, system=[{"type": "text", "text": "Be brief."}],
                                   messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure:"}],
                                   stop_sequences=["there"])
    request = engine.requests[-1]
    assert request.assistant_prefix == "Sure:" and request.params.stop == ["there"]
    assert request.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert reply.content[0].text == "Hello " and reply.id.startswith("msg_")
    assert (reply.stop_reason, reply.stop_sequence) == ("stop_sequence", "there")  # as Anthropic answers it
    with client.messages.stream(model="base", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
                                stop_sequences=["there"]) as s:
        assert (s.get_final_message().stop_reason, s.get_final_message().stop_sequence) == ("stop_sequence", "there")
    reply = client.messages.create(model="base", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert (reply.stop_reason, reply.stop_sequence) == ("end_turn", None)  # its own end of turn
    for extra, param in [({"tools": [{"name": "x", "input_schema": {"type": "object"}}]}, "tools"),
                         ({"extra_body": {"top_k": 5}}, "top_k"),
                         ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
                          "messages[0].content")]:
        body = {"model": "base", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], **extra}
        with pytest.raises(anthropic.BadRequestError) as err:
            client.messages.create(**body)
        assert err.value.status_code == 400 and err.value.body["error"]["param"] == param


def test_anthropic_options_of_the_sdk_are_accepted_or_refused_by_name_never_unrecognized():
    # keywords of this SDK's messages.create that Anthropic's API accepts for any model: hints that change nothing
    # here are served; the ones asking for what is not served are named (never "Unrecognized request argument")
    engine = ScriptedEngine(pieces=["Hello", " there"])
    client = sdk(build_app(engine, DeployConfig()))
    hi = {"model": "base", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    reply = client.messages.create(**hi, service_tier="auto", inference_geo="us", speed="standard",
                                   cache_control={"type": "ephemeral"})
    assert reply.content[0].text == "Hello there"
    for extra, param in [({"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
                          "output_config"), ({"container": "c-1"}, "container")]:
        with pytest.raises(anthropic.BadRequestError) as err:
            client.messages.create(**hi, **extra)
        assert err.value.body["error"]["param"] == param and "Unrecognized" not in err.value.body["error"]["message"]
    assert client.messages.count_tokens(model="base", messages=hi["messages"], cache_control={"type": "ephemeral"})


def test_left_out_stop_sequences_are_the_deploys_stop_strings():
    engine = ScriptedEngine(pieces=["Hello", " there", "!"])
    client = sdk(build_app(engine, DeployConfig(generation={"stop": ["there"]})))  # tunesmith deploy --stop there
    reply = client.messages.create(model="base", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert engine.requests[-1].params.stop == ["there"]  # as /v1/chat/completions uses them
    assert (reply.content[0].text, reply.stop_reason, reply.stop_sequence) == ("Hello ", "stop_sequence", "there")
    reply = client.messages.create(model="base", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
                                   stop_sequences=["!"])  # the request's own replace them
    assert (reply.content[0].text, reply.stop_sequence) == ("Hello there", "!")


def test_guardrails_refuse_as_stop_reason_refusal(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text('deny_keywords: [there]\nrefusal: "No."\n')
    client = sdk(build_app(ScriptedEngine(pieces=["Hello", " there"]), DeployConfig(guardrails=[f"base={policy}"])))
    reply = client.messages.create(model="base", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert (reply.content[0].text, reply.stop_reason) == ("No.", "refusal")
