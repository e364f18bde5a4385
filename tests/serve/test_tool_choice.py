"""tool_choice "required" and a named function: the call is forced and its arguments follow the tool's schema
(infer/tool_grammar.py, a grammar on the logits).

1. For every family whose template writes a call as a JSON object, the grammar read from its template accepts, token
   by token, exactly the call that training renders for that turn and then the end of turn; a call whose arguments
   break the schema is refused.
2. Served on the real transformers engine (a tiny random Qwen2.5-family model with the real Qwen tokenizer and
   template, which never writes a call by itself): every forced answer is one call, to the named tool or one of the
   tools, whose arguments validate, whole and streamed, greedy and sampled; the server's parser reads it back.
3. What cannot be forced is a 400 naming tool_choice: an unknown name, no tools, forcing with response_format.
4. Tools given to a template that cannot render them (SmolLM2's) are a 400 naming tools, unless tool_choice is "none".
"""

from __future__ import annotations

import json

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient

from real_tokenizers import family_tokenizer
from tunesmith.config import DeployConfig
from tunesmith.infer import load_engine
from tunesmith.infer.grammar import lltokenizer
from tunesmith.infer.tool_grammar import call_frame, tool_call_grammar
from tunesmith.models.families import FAMILIES
from tunesmith.serve.app import build_app
from tunesmith.templates import Template

WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "days", "unit"],
           "properties": {"city": {"type": "string", "maxLength": 12}, "days": {"type": "integer", "minimum": 1,
                                                                                "maximum": 7},
                          "unit": {"enum": ["C", "F"]}}}
TICKET = {"type": "object", "additionalProperties": False, "required": ["title"],
          "properties": {"title": {"type": "string", "maxLength": 20}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather.", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "open_ticket", "description": "Ticket.", "parameters": TICKET}}]
FRAMED = ["qwen2.5", "qwen3", "llama3", "llama4", "mistral-nemo", "granite3"]
UNFRAMED = ["mistral-small", "deepseek-v3", "gpt-oss"]  # and Qwen3.5's XML (its tokenizer takes 14 s to build)


CALLED = [{"role": "user", "content": "Weather in Paris?"},
          {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
              "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
          {"role": "tool", "tool_call_id": "c1", "content": "18 C"}]


def call_turn_ids(template: Template, arguments: dict, call_id: str) -> list[int]:
    """The ids training renders for an assistant turn that calls get_weather, through its end of turn."""
    conv = [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": call_id, "type": "function", "function": {
                "name": "get_weather", "arguments": arguments}}]}]
    prompt = template.render_prompt(conv[:1], tools=TOOLS)
    ids, _ = template.render(conv, tools=TOOLS)
    assert ids[:len(prompt)] == prompt
    answer = ids[len(prompt):]
    stop = next(i for i, t in enumerate(answer) if t in template.stop_token_ids)
    return answer[:stop + 1]


def matcher_for(template: Template, name: str | None):
    import llguidance

    grammar = tool_call_grammar(call_frame(template), TOOLS, name, template.tokenizer)
    vocab = len(template.tokenizer)
    return llguidance.LLMatcher(lltokenizer(template, vocab), grammar)


@pytest.mark.parametrize("name", FRAMED)
def test_the_grammar_accepts_exactly_the_call_training_teaches(name):
    template = Template(family_tokenizer(FAMILIES[name]))
    call_id = FAMILIES[name].tool_call_id or "call_1"
    good = call_turn_ids(template, {"city": "Paris", "days": 3, "unit": "C"}, call_id)
    for forced in ("get_weather", None):
        matcher = matcher_for(template, forced)
        assert matcher.consume_tokens(good[:-1]), (name, matcher.get_error())
        assert matcher.consume_token(good[-1]), f"{name}: the end of turn after the call is refused"
    bad = call_turn_ids(template, {"city": "Paris", "days": 9, "unit": "C"}, call_id)  # days above the schema's maximum
    matcher = matcher_for(template, "get_weather")
    assert not matcher.consume_tokens(bad)
    assert not matcher_for(template, "open_ticket").consume_tokens(good)  # the other tool's name


@pytest.mark.parametrize("name", UNFRAMED)
def test_templates_that_write_no_json_call_object_have_no_frame(name):
    assert call_frame(Template(family_tokenizer(FAMILIES[name]))) is None


@pytest.fixture(scope="module")
def qwen_model(tmp_path_factory):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = family_tokenizer(FAMILIES["qwen2.5"])
    config = AutoConfig.for_model("qwen2", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                                  max_position_embeddings=4096, pad_token_id=tok.pad_token_id,
                                  eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), tie_word_embeddings=True)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "tiny-qwen"
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def client(qwen_model):
    engine = load_engine("transformers", model=str(qwen_model), device="cpu", dtype="float32", kv_cache_gib=1.0,
                         max_batch_tokens=256)  # a 151k vocabulary: logits of 1024 tokens alone need 0.6 GB
    with TestClient(build_app(engine, DeployConfig(max_tokens_limit=200))) as c:
        yield c


def ask(client, tool_choice, **body):
    return client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "What is the weather in Oslo this week?"}], "tools": TOOLS,
        "tool_choice": tool_choice, "max_tokens": 80, **body})


def test_forced_calls_are_one_valid_call_whole_and_streamed(client):
    free = ask(client, "auto", temperature=0).json()["choices"][0]
    assert free["finish_reason"] != "tool_calls" and not free["message"]["tool_calls"]  # it never calls by itself
    validators = {t["function"]["name"]: jsonschema_rs.validator_for(t["function"]["parameters"]) for t in TOOLS}
    named = {"type": "function", "function": {"name": "get_weather"}}
    seen = set()
    for k, choice in enumerate([named, "required"] * 3):
        sampling = {"temperature": 0} if k < 2 else {"temperature": 1.0, "seed": k}
        reply = ask(client, choice, **sampling).json()["choices"][0]
        assert reply["finish_reason"] == "tool_calls", reply
        [call] = reply["message"]["tool_calls"]
        name = call["function"]["name"]
        assert name == "get_weather" if choice is named else name in validators
        validators[name].validate(json.loads(call["function"]["arguments"]))
        seen.add(name)
    with client.stream("POST", "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "Open a ticket."}], "tools": TOOLS, "tool_choice": named,
            "max_tokens": 80, "stream": True, "temperature": 1.0, "seed": 7}) as reply:
        events = [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith("data: {")]
    calls = [c for e in events for c in (e["choices"][0]["delta"].get("tool_calls") or []) if e["choices"]]
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls" and calls[0]["function"]["name"] == "get_weather"
    validators["get_weather"].validate(json.loads("".join(c["function"].get("arguments") or "" for c in calls)))


def test_what_cannot_be_forced_is_a_400_naming_tool_choice(client):
    cases = [({"type": "function", "function": {"name": "nope"}}, {}, "'nope' is not one of the request's tools"),
             ("required", {"tools": None}, "forcing a call needs tools"),
             ("required", {"response_format": {"type": "json_object"}}, "cannot be combined")]
    for choice, extra, fragment in cases:
        reply = ask(client, choice, **extra)
        assert reply.status_code == 400 and fragment in reply.json()["error"]["message"], reply.text
        assert reply.json()["error"]["param"] == "tool_choice"


def test_tools_a_template_cannot_render_are_a_400_naming_tools_and_tool_choice_none_is_answered(tiny_model):
    """SmolLM2's ChatML template has no tools branch: tools given to it would be dropped and the model would answer
    as if it had none. Qwen2.5's renders them (its requests are answered: the tests above)."""
    engine = load_engine("transformers", model=str(tiny_model), device="cpu", dtype="float32", kv_cache_gib=0.25)
    assert not engine.template_for(None).renders_tools
    assert Template(family_tokenizer(FAMILIES["qwen2.5"])).renders_tools
    with TestClient(build_app(engine, DeployConfig())) as plain:
        for choice, extra in [("auto", {}), (None, {}), ("required", {}), ("auto", {"stream": True})]:
            reply = ask(plain, choice, **extra)
            assert reply.status_code == 400, reply.text
            error = reply.json()["error"]
            assert error["param"] == "tools" and error["type"] == "invalid_request_error"
            assert "chat template of tiny-llama cannot render tools" in error["message"]
        reply = ask(plain, "none", max_tokens=2)  # "none" renders no tools: the answer is text, as OpenAI's
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["tool_calls"] is None, reply.text
        # an earlier call in the conversation: ChatML renders the assistant's content only, so it would vanish
        reply = plain.post("/v1/chat/completions", json={"max_tokens": 2, "messages": CALLED})
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "messages[1].tool_calls", reply.text
        assert "cannot render tool calls" in reply.json()["error"]["message"]


def test_an_earlier_call_reaches_a_template_that_renders_calls(client):
    reply = client.post("/v1/chat/completions", json={"max_tokens": 2, "messages": CALLED})
    assert reply.status_code == 200, reply.text
