"""`tunesmith deploy` for a team, through the console script, queried with the official openai SDK: a model with two
versions (random LoRA adapters of the tiny model) and a 90/10 split sticky per user (--model-config), the admin API
behind its own key (--admin-key) beside the user key (--api-key), and the base itself served as `dao` under the DAO
drafter's shipped output policy (--guardrails), which a random model's uncited text always breaks.

One server for the module. Volume checks (400 requests, rollback under load) run in process in
tests/serve/test_versions.py; here each feature is checked once through the real process.
"""

from pathlib import Path

import httpx
import pytest
from e2e_cli import running
from tiny import make_tiny_adapter

USER_KEY, ADMIN_KEY = "sk-team-user-1", "sk-team-admin-1"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
HELLO = [{"role": "user", "content": "Draft a proposal"}]
DAO_POLICY = Path(__file__).resolve().parents[2] / "examples" / "dao-proposal" / "guardrails.yaml"


@pytest.fixture(scope="module")
def files(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("production")
    a = make_tiny_adapter(root / "runs" / "a" / "final", tiny_model, seed=1)
    b = make_tiny_adapter(root / "runs" / "b" / "final", tiny_model, seed=2)
    serving = root / "serving.yaml"
    serving.write_text(f"prd:\n  versions: {{v1: {a}, v2: {b}}}\n  traffic: {{v1: 90, v2: 10}}\n  sticky_by: user\n")
    return {"serving": serving, "a": a, "b": b}


@pytest.fixture(scope="module")
def server(files, tiny_model, tmp_path_factory):
    with running("--model", tiny_model, "--served-model-name", "dao", "--guardrails", f"dao={DAO_POLICY}",
               "--model-config", files["serving"], "--admin-key", ADMIN_KEY, "--api-key", USER_KEY,
               "--device", "cpu", "--dtype", "float32", "--max-tokens", "6",
               log=tmp_path_factory.mktemp("deploy") / "deploy.log") as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=USER_KEY, max_retries=0)


@pytest.fixture(scope="module")
def admin(server):
    with httpx.Client(base_url=server.url + "/admin", headers=ADMIN, timeout=120) as c:
        yield c


def metric(server, name, **labels):
    text = httpx.get(server.url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
               and all(f'{k}="{v}"' in line for k, v in labels.items()))


def test_versions_split_sticky_named_and_counted(server, client):
    seen = {}
    for i in range(24):
        raw = client.chat.completions.with_raw_response.create(model="prd", messages=HELLO, user=f"user-{i}")
        reply = raw.parse()
        assert reply.model in ("prd:v1", "prd:v2") and raw.headers["x-tunesmith-version"] == reply.model[4:]
        seen[f"user-{i}"] = reply.model
    assert "prd:v1" in seen.values()  # 90 % of them, give or take
    for user in list(seen)[:4]:  # sticky: the same version for the same user
        assert client.chat.completions.create(model="prd", messages=HELLO, user=user).model == seen[user]
    assert metric(server, "tunesmith_version_requests_total", model="prd") == 28
    assert metric(server, "tunesmith_version_requests_total", model="prd", version="v2") == \
        list(seen.values()).count("prd:v2") + [seen[u] for u in list(seen)[:4]].count("prd:v2")
    assert {m.id for m in client.models.list()} == {"dao", "prd", "prd:v1", "prd:v2"}


def test_admin_changes_the_split_and_rolls_back_without_loading_anything(server, client, admin):
    assert httpx.get(server.url + "/admin/models", headers={"Authorization": f"Bearer {USER_KEY}"}).status_code == 403
    state = admin.get("/models").json()
    assert state["weight_loads"] == 1  # one base (served as dao), two versions over it
    moved = admin.put("/models/prd/traffic", json={"traffic": {"v1": 0, "v2": 100}})
    assert moved.status_code == 200 and moved.json()["models"]["prd"]["stable"] == "v2"
    assert {client.chat.completions.create(model="prd", messages=HELLO, user=f"u{i}").model for i in range(4)} == \
        {"prd:v2"}
    rolled = admin.post("/models/prd/rollback").json()
    assert rolled["models"]["prd"]["versions"]["v1"]["traffic"] == 100 and rolled["weight_loads"] == 1
    assert {client.chat.completions.create(model="prd", messages=HELLO, user=f"u{i}").model for i in range(4)} == \
        {"prd:v1"}


def test_the_dao_policy_refuses_an_uncited_draft_whole_and_streamed(server, client):
    reply = client.chat.completions.create(model="dao", messages=HELLO)
    choice = reply.choices[0]
    assert choice.finish_reason == "content_filter" and choice.message.content.startswith("I can't send this draft")
    assert choice.message.refusal == choice.message.content
    pieces = list(client.chat.completions.create(model="dao", messages=HELLO, stream=True))
    text = "".join(p.choices[0].delta.content or "" for p in pieces if p.choices)
    assert text == choice.message.content and pieces[-1].choices[0].finish_reason == "content_filter"
    assert metric(server, "tunesmith_guardrail_blocked_total", model="dao", rule="classifier") == 2


def test_json_schema_answers_through_the_sdk_parse_and_validate(client):
    import json

    schema = {"type": "object", "additionalProperties": False, "required": ["title", "budget"],
              "properties": {"title": {"type": "string", "maxLength": 20},
                             "budget": {"type": "integer", "minimum": 0, "maximum": 50000}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "proposal", "schema": schema, "strict": True}}
    reply = client.chat.completions.create(model="prd", messages=HELLO, response_format=fmt, max_tokens=60, user="u1")
    answer = json.loads(reply.choices[0].message.content)
    assert set(answer) == {"title", "budget"} and 0 <= answer["budget"] <= 50000 and len(answer["title"]) <= 20
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="prd", messages=HELLO, response_format=fmt, max_tokens=60, stream=True, temperature=1.0) if c.choices]
    assert len([p for p in pieces if p]) > 3 and set(json.loads("".join(pieces))) == {"title", "budget"}


def test_anthropic_messages_through_the_sdk(server):
    anthropic = pytest.importorskip("anthropic")
    client = anthropic.Anthropic(base_url=server.url, api_key=USER_KEY, max_retries=0)  # sent as x-api-key
    reply = client.messages.create(model="prd", max_tokens=5, messages=[{"role": "user", "content": "Draft it"}],
                                   metadata={"user_id": "user-1"})
    assert reply.type == "message" and reply.model in ("prd:v1", "prd:v2") and reply.usage.output_tokens == 5
    with client.messages.stream(model="dao", max_tokens=5, messages=[{"role": "user", "content": "Draft it"}]) as s:
        assert s.get_final_message().stop_reason == "refusal"  # the DAO policy holds here too
