"""deploy --engine-process (infer/engine_process.py): the engine runs in its own process, the server's side renders
prompts with copies of its templates and streams the Deltas that come back. Answers must be the in-process engine's,
errors must keep their kind (and so their status), a client that leaves must free its request there, and an engine
process that dies must be reported (/health 503, a 500 JSON error) while the server keeps answering."""

import asyncio
import os
import signal
import time

import pytest
from fastapi.testclient import TestClient
from tiny import make_tiny_model, untie_head

from tunesmith.config import DeployConfig
from tunesmith.errors import TunesmithError
from tunesmith.infer.types import GenerationRequest, SamplingParams
from tunesmith.serve.app import build_app

USER = [{"role": "user", "content": "Write three lines about rivers and the towns along them."}]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return untie_head(make_tiny_model(tmp_path_factory.mktemp("engine-process") / "tiny-untied"))


@pytest.fixture(scope="module")
def apps(model):
    """The same model behind two servers: the engine in process, and in its own process."""
    from tunesmith.infer import load_engine
    from tunesmith.infer.engine_process import start_engine_process

    local = load_engine("transformers", model=str(model), device="cpu", dtype="float32")
    remote = start_engine_process("transformers", model=str(model), device="cpu", dtype="float32")
    with TestClient(build_app(local, DeployConfig())) as here, TestClient(build_app(remote, DeployConfig())) as there:
        yield here, there, remote


def chat(client, **body):
    reply = client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 16, "temperature": 0, **body})
    assert reply.status_code == 200, reply.text
    return reply.json()


def streamed(client, **body) -> tuple[str, dict]:
    import json

    body = {"messages": USER, "max_tokens": 16, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, **body}
    with client.stream("POST", "/v1/chat/completions", json=body) as reply:
        assert reply.status_code == 200, reply.read()
        events = [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    return text, events[-1]["usage"]


def test_answers_are_the_in_process_engines(apps):
    here, there, engine = apps
    assert engine.process.poll() is None and engine.process.pid != os.getpid()
    whole = chat(there, n=2)
    assert [c["message"] for c in whole["choices"]] == [c["message"] for c in chat(here, n=2)["choices"]]
    assert whole["usage"] == chat(here, n=2)["usage"] and whole["usage"]["completion_tokens"] == 32
    text, usage = streamed(there)
    assert (text, usage) == streamed(here) and text == whole["choices"][0]["message"]["content"] and text.strip()
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert streamed(there, stop=[stop]) == streamed(here, stop=[stop])  # cut in the engine's process, as here
    assert there.get("/health").json() == here.get("/health").json()


def test_an_error_raised_in_the_engines_process_keeps_its_kind(apps):
    *_, engine = apps

    async def empty_prompt() -> None:
        request = GenerationRequest(prompt_ids=[], params=SamplingParams(max_tokens=4))
        async for _ in engine.stream(request):
            pass

    with pytest.raises(TunesmithError, match="the prompt is empty"):  # a 400 to the server, as in process
        asyncio.run(empty_prompt())


def test_a_client_that_leaves_frees_its_request_in_the_engines_process(apps):
    here, there, engine = apps

    async def leave_after_first() -> None:
        request = GenerationRequest(messages=USER, params=SamplingParams(max_tokens=200, temperature=0))
        request.prompt_ids = engine.prompt_ids(request)
        stream = engine.stream(request)
        await anext(stream)
        await stream.aclose()  # the engine's process cancels it: its batch slot and KV blocks are freed

    asyncio.run(leave_after_first())
    deadline = time.monotonic() + 30
    while engine.open_streams() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.open_streams() == 0
    assert chat(there)["choices"][0]["message"] == chat(here)["choices"][0]["message"]  # and it keeps answering


def test_a_model_loaded_while_serving_is_known_on_the_servers_side(apps, model):
    here, there, engine = apps
    engine.add_model("copy", str(model))  # what the admin API calls, in a worker thread
    assert engine.model_names()[-1] == "copy" and engine.context_length("copy") == engine.context_length()

    async def answer() -> str:
        request = GenerationRequest(messages=USER, model="copy", params=SamplingParams(max_tokens=16, temperature=0))
        request.prompt_ids = engine.prompt_ids(request)
        return "".join([delta.text async for delta in engine.stream(request)])

    assert asyncio.run(answer()) == chat(here)["choices"][0]["message"]["content"]
    engine.remove_model("copy")
    assert "copy" not in engine.model_names()
    with pytest.raises(TunesmithError, match="is not served here"):  # raised there, its kind kept
        engine.remove_model("copy")


def test_a_dead_engine_process_is_reported_and_the_server_keeps_answering(model):
    from tunesmith.infer.engine_process import start_engine_process

    engine = start_engine_process("transformers", model=str(model), device="cpu", dtype="float32")
    with TestClient(build_app(engine, DeployConfig())) as client:
        assert client.get("/health").status_code == 200
        os.kill(engine.process.pid, signal.SIGKILL)
        engine.reader.join(30)
        health = client.get("/health")
        assert health.status_code == 503 and "exit code -9" in health.text
        reply = client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 4})
        assert reply.status_code == 500 and "exit code -9" in reply.json()["error"]["message"]
        assert client.get("/v1/models").status_code == 200


def test_unset_it_is_on_for_the_transformers_engine_on_cuda_only(monkeypatch):
    from pydantic import ValidationError

    from tunesmith.models import load
    from tunesmith.serve.app import in_own_process

    monkeypatch.setattr(load, "pick_device", lambda preference: "cpu")
    assert in_own_process(DeployConfig()) is False
    assert in_own_process(DeployConfig(engine_process=True)) is True
    monkeypatch.setattr(load, "pick_device", lambda preference: "cuda")
    assert in_own_process(DeployConfig()) is True
    assert in_own_process(DeployConfig(engine_process=False)) is False
    with pytest.raises(ValidationError, match="engine_process: the vllm backend"):
        DeployConfig(backend="vllm", engine_process=True)


def test_a_vision_model_encodes_its_prompts_with_pictures_in_the_engines_process(tmp_path):
    """The server's side gets the VLM's template without its processor (whose class does not pickle); the prompt
    with its picture is encoded in the engine's process, to the ids the engine in process encodes, and answered."""
    from PIL import Image
    from vision.tiny_vlm import make_image, make_tiny_qwen2_vl

    from tunesmith.infer import load_engine
    from tunesmith.infer.engine_process import start_engine_process

    vlm = make_tiny_qwen2_vl(tmp_path / "vlm")
    picture = Image.open(make_image(tmp_path / "red.png", (220, 30, 30), (56, 42))).convert("RGB")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}]

    def request() -> GenerationRequest:
        return GenerationRequest(messages=messages, images=[picture], params=SamplingParams(max_tokens=6))

    local = load_engine("transformers", model=str(vlm), device="cpu", dtype="float32")
    remote = start_engine_process("transformers", model=str(vlm), device="cpu", dtype="float32")
    try:
        assert remote.accepts_images() and remote.template_for(None).processor is None
        assert remote.prompt_ids(request()) == local.prompt_ids(request())
        assert asyncio.run(remote.generate(request())).choices == asyncio.run(local.generate(request())).choices
    finally:
        asyncio.run(remote.close())
        asyncio.run(local.close())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_on_cuda_the_engine_process_answers_as_the_engine_in_process(model, dtype):
    """deploy's default on a CUDA GPU: the batch (CUDA graphs, async batching, in bfloat16 the varlen kernel) runs in
    the engine's process and answers what it answers in process."""
    from tunesmith.infer import load_engine
    from tunesmith.infer.engine_process import start_engine_process

    def requests() -> list[GenerationRequest]:
        return [GenerationRequest(messages=[{"role": "user", "content": f"Name {i} rivers."}],
                                  params=SamplingParams(max_tokens=24, temperature=0)) for i in range(8)]

    async def answers(engine) -> list[str]:
        completions = await asyncio.gather(*[engine.generate(r) for r in requests()])
        return [c.choices[0].text for c in completions]

    local = load_engine("transformers", model=str(model), device="cuda", dtype=dtype)
    expected = asyncio.run(answers(local))
    asyncio.run(local.close())
    remote = start_engine_process("transformers", model=str(model), device="cuda", dtype=dtype)
    try:
        assert remote.device == "cuda" and asyncio.run(answers(remote)) == expected
    finally:
        asyncio.run(remote.close())
