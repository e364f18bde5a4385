"""Output guardrails (deploy --guardrails MODEL=policy.yaml, serve/guardrails.py): deny-lists never let a phrase out,
also when it spans stream chunks (every two-way cut of the answer, on the scripted engine, and on the real engine's
own chunks), held text is released once no rule can match, whole-answer rules (require_regex, json_schema, a
classifier hook), refusal vs 4xx, counts in /metrics, and the DAO drafter's shipped policy."""

import json
from pathlib import Path

import pytest
import regex
from fastapi.testclient import TestClient
from scripted_engine import ScriptedEngine

from tunesmith.config import DeployConfig
from tunesmith.errors import ConfigError
from tunesmith.serve.app import build_app

DAO = Path(__file__).resolve().parents[2] / "examples" / "dao-proposal"
REFUSAL = "I can't send that answer."
BAD = "Join now: our fund offers guaranteed returns to all members."
CLEAN = "Nothing is guaranteed; returns vary. Kids scamper off past idiotic charts and scampi."


def policy(tmp_path, text):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


DENY = f'deny_regex: ["guaranteed (returns|profits?)"]\ndeny_keywords: [scam, idiot]\nrefusal: "{REFUSAL}"\n'


def client_for(tmp_path, pieces, text=DENY, **cfg):
    engine = ScriptedEngine(pieces=pieces)
    app = build_app(engine, DeployConfig(guardrails=[f"base={policy(tmp_path, text)}"], **cfg))
    return TestClient(app)


def stream(client, model="base", route="/v1/chat/completions", **extra):
    body = {"model": model, "max_tokens": 200, "stream": True}
    body |= {"messages": [{"role": "user", "content": "hi"}]} if "chat" in route else {"prompt": "hi"}
    body |= extra
    with client.stream("POST", route, json=body) as reply:
        assert reply.status_code == 200, reply.read()
        events = [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith("data: {")]
    return events


def streamed_text(events):
    """(the content before any refusal, the refusal, the finish reason)."""
    text, refusal, finish = "", None, None
    for e in events:
        for c in e.get("choices", []):
            delta = c.get("delta", {})
            if delta.get("refusal"):
                refusal = delta["refusal"]
            elif "text" in c or delta.get("content"):
                text += c.get("text") or delta.get("content") or ""
            finish = c.get("finish_reason") or finish
    return text, refusal, finish


def cuts(text):
    return [[text[:k], text[k:]] for k in range(1, len(text))]


def test_a_denied_phrase_never_leaves_whatever_the_two_chunks(tmp_path):
    for pieces in cuts(BAD):
        with client_for(tmp_path, pieces) as client:
            sent, refusal, finish = streamed_text(stream(client))
            assert "guaranteed returns" not in sent and "guaranteed r" not in sent, pieces
            assert sent == BAD[:len(sent)] and refusal == REFUSAL and finish == "content_filter", (pieces, sent)
    with client_for(tmp_path, ["Our fund offers guaran", "teed returns", " to all."]) as client:
        whole = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}).json()
        assert whole["choices"][0] == {"index": 0, "logprobs": None, "finish_reason": "content_filter", "message": {
            "role": "assistant", "content": REFUSAL, "refusal": REFUSAL, "tool_calls": None, "reasoning_content": None}}
        assert streamed_text(stream(client))[0] == "Our fund offers "  # held from "guaran" on
        text = client.get("/metrics").text
        assert 'tunesmith_guardrail_blocked_total{model="base",rule="deny_regex[0]"} 2.0' in text


def test_clean_text_goes_out_whole_whatever_the_chunks_and_words_inside_words_pass(tmp_path):
    for pieces in [*cuts(CLEAN), list(CLEAN)]:  # every two-way cut, and one character per chunk
        with client_for(tmp_path, pieces) as client:
            sent, refusal, finish = streamed_text(stream(client))
            assert (sent, refusal, finish) == (CLEAN, None, "stop"), pieces
    with client_for(tmp_path, ["He is a sca", "m artist"]) as client:  # "scam" as a word: blocked
        assert streamed_text(stream(client))[:2] == ("He is a ", REFUSAL)
        assert streamed_text(stream(client, route="/v1/completions"))[0] == "He is a " + REFUSAL


def test_whole_answer_rules_hold_the_stream_and_refuse_or_answer_4xx(tmp_path):
    hook = tmp_path / "tone.py"
    hook.write_text("def tone(text):\n    return 'shouting' if '!!' in text else None\n")
    text = ('require_regex: ["0x[0-9a-f]{64}"]\nclassifier: tone.py:tone\non_violation: error\nstatus: 451\n')
    cited = ["See tx 0x" + "ab" * 32, " for the data."]
    with client_for(tmp_path, cited, text) as client:
        assert streamed_text(stream(client)) == ("".join(cited), None, "stop")
        events = stream(client)
        assert len([e for e in events if e["choices"] and e["choices"][0]["delta"].get("content")]) == 1  # held whole
    with client_for(tmp_path, ["No source", " here."], text) as client:
        reply = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 451 and reply.json()["error"]["code"] == "content_filter"
        assert "require_regex[0]" in reply.json()["error"]["message"]
        streamed = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                              "stream": True})
        assert streamed.status_code == 451  # held to the end, so the 4xx comes before any 200
    with client_for(tmp_path, ["0x" + "cd" * 32, " !!"], text) as client:
        assert client.post("/v1/completions", json={"prompt": "hi"}).status_code == 451  # the classifier's
        assert 'rule="classifier"' in client.get("/metrics").text


def test_a_json_schema_policy(tmp_path):
    schema = {"type": "object", "required": ["title"], "properties": {"title": {"type": "string"}}}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    text = f'json_schema: schema.json\nrefusal: "{REFUSAL}"\n'
    with client_for(tmp_path, ['{"title": ', '"Budget"}'], text) as client:
        assert client.post("/v1/completions", json={"prompt": "x"}).json()["choices"][0]["text"] == '{"title": "Budget"}'
    with client_for(tmp_path, ['{"name": 1}'], text) as client:
        assert client.post("/v1/completions", json={"prompt": "x"}).json()["choices"][0]["text"] == REFUSAL


def test_bad_policies_are_named_before_serving(tmp_path):
    with pytest.raises(ConfigError, match=r"policy.yaml:1: .*deny_regex.*not a valid regular expression"):
        client_for(tmp_path, ["x"], 'deny_regex: ["(unclosed"]\n')
    with pytest.raises(ConfigError, match="matches empty text"):
        client_for(tmp_path, ["x"], 'deny_regex: ["a*"]\n')
    with pytest.raises(ConfigError, match="nope.py not found"):
        client_for(tmp_path, ["x"], "classifier: nope.py:f\n")
    with pytest.raises(ConfigError, match="not a served model"):
        build_app(ScriptedEngine(), DeployConfig(guardrails=[f"other={policy(tmp_path, DENY)}"]))


def test_the_dao_drafters_policy_blocks_hype_insults_and_uncited_drafts(tmp_path):
    cited = ("## Summary\nFund the audit.\n## Data cited\n- https://etherscan.io/tx/0x" + "1f" * 32 + "\n")
    cases = {cited: None, cited + "Guaranteed returns for holders.": "deny_regex",
             cited + "Only an idiot votes no.": "deny_keywords", "## Summary\nFund the audit, trust me.": "classifier"}
    for answer, rule in cases.items():
        engine = ScriptedEngine(pieces=[answer])
        with TestClient(build_app(engine, DeployConfig(guardrails=[f"base={DAO / 'guardrails.yaml'}"]))) as client:
            reply = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "draft"}]})
            choice = reply.json()["choices"][0]
            assert (choice["finish_reason"] == "content_filter") == (rule is not None), (answer, choice)
            if rule:
                assert "cite" in choice["message"]["content"] and rule in client.get("/metrics").text


def test_on_the_real_engine_a_phrase_spanning_two_of_its_chunks_never_leaves(tiny_model, tmp_path):
    """The tiny random model greedily repeats one token; deny two of them in a row, which only two chunks hold."""
    import asyncio

    from tiny import make_tiny_adapter

    from tunesmith.infer import GenerationRequest, SamplingParams, load_engine

    adapter = make_tiny_adapter(tmp_path / "a" / "final", tiny_model, seed=1)
    engine = load_engine("transformers", model=str(tiny_model), adapters={"a": str(adapter)}, device="cpu",
                         dtype="float32", kv_cache_gib=0.25)
    messages = [{"role": "user", "content": "Draft a proposal"}]

    async def unguarded():
        request = GenerationRequest(messages=messages, model="a", params=SamplingParams(max_tokens=12))
        return [d.text async for d in engine.stream(request) if d.text]

    chunks = asyncio.run(unguarded())
    assert len(chunks) >= 3
    phrase = chunks[1][-3:] + chunks[2][:3]  # the end of one chunk and the start of the next
    rule = policy(tmp_path, f"deny_regex: [{json.dumps(regex.escape(phrase))}]\nrefusal: blocked\n")
    with TestClient(build_app(engine, DeployConfig(guardrails=[f"a={rule}"]))) as guarded:
        sent, refusal, finish = streamed_text(stream(guarded, model="a", max_tokens=12, temperature=0,
                                                             messages=messages))
    assert phrase in "".join(chunks) and phrase not in sent and (refusal, finish) == ("blocked", "content_filter")
    assert "".join(chunks).startswith(sent)
