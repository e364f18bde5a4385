"""response_format json_schema / json_object on the real transformers engine (tiny random model, whose free text is
never JSON): under the grammar (infer/grammar.py, llguidance) every answer parses and validates against the schema,
whole and streamed in several chunks, greedy and sampled; schemas the grammar cannot take are 400s naming the field."""

import json

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient

from tunesmith.config import DeployConfig
from tunesmith.infer import load_engine
from tunesmith.serve.app import build_app

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["title", "budget", "urgent", "chain", "tags"],
          "properties": {"title": {"type": "string", "maxLength": 24},
                         "budget": {"type": "integer", "minimum": 0, "maximum": 100000},
                         "urgent": {"type": "boolean"}, "chain": {"enum": ["ethereum", "arbitrum", "base"]},
                         "tags": {"type": "array", "maxItems": 2, "items": {"type": "string", "maxLength": 8}}}}
FORMAT = {"type": "json_schema", "json_schema": {"name": "proposal", "schema": SCHEMA, "strict": True}}
PROMPTS = [f"Draft proposal {i} for the {topic} budget as JSON." for i, topic in
           enumerate(["audit", "grants", "marketing", "bridge", "oracle", "treasury", "events", "research", "legal",
                      "hiring"])]


@pytest.fixture(scope="module")
def client(tiny_model):
    engine = load_engine("transformers", model=str(tiny_model), device="cpu", dtype="float32", kv_cache_gib=0.25)
    with TestClient(build_app(engine, DeployConfig(max_tokens_limit=200))) as c:
        yield c


def ask(client, prompt, **body):
    return client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": prompt}],
                                                      "max_tokens": 120, **body})


def streamed(client, prompt, **body):
    with client.stream("POST", "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": prompt}], "max_tokens": 120, "stream": True, **body}) as reply:
        assert reply.status_code == 200
        events = [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith("data: {")]
    pieces = [e["choices"][0]["delta"].get("content") for e in events if e["choices"]]
    return [p for p in pieces if p], events[-1]["choices"][0]["finish_reason"]


def test_json_schema_answers_parse_and_validate_whole_and_streamed(client):
    validator = jsonschema_rs.validator_for(SCHEMA)
    free = ask(client, PROMPTS[0], temperature=0).json()["choices"][0]["message"]["content"]
    with pytest.raises(ValueError):
        json.loads(free)  # without the grammar the random model writes no JSON
    answers = []
    for k, prompt in enumerate(PROMPTS):
        sampling = {"temperature": 0} if k % 2 else {"temperature": 1.0, "seed": k}
        choice = ask(client, prompt, response_format=FORMAT, **sampling).json()["choices"][0]
        assert choice["finish_reason"] == "stop", choice
        answers.append(json.loads(choice["message"]["content"]))
        pieces, finish = streamed(client, prompt, response_format=FORMAT, temperature=1.0)
        assert finish == "stop" and len(pieces) > 3  # streamed token by token, not at the end
        answers.append(json.loads("".join(pieces)))
    assert all(validator.is_valid(a) for a in answers), [a for a in answers if not validator.is_valid(a)]
    assert len({json.dumps(a) for a in answers}) > 5  # sampled answers differ: the grammar masks, it does not dictate


def test_json_object_starts_an_object_and_parses_when_it_ends(client):
    for prompt in PROMPTS[:3]:
        choice = ask(client, prompt, response_format={"type": "json_object"}, temperature=0).json()["choices"][0]
        text = choice["message"]["content"]
        assert text.startswith("{")
        if choice["finish_reason"] == "stop":
            assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize(("response_format", "fragment"), [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}, "Invalid type"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}, "nowhere"),
    ({"type": "json_schema", "json_schema": {"name": "no spaces", "schema": {}}}, "name"),
    ({"type": "json_schema"}, "json_schema: required"),
])
def test_schemas_the_grammar_cannot_take_are_400_naming_response_format(client, response_format, fragment):
    reply = ask(client, "x", response_format=response_format)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "response_format"
    assert fragment in reply.json()["error"]["message"]
    assert ask(client, "x", response_format=FORMAT, logprobs=True).status_code == 400
