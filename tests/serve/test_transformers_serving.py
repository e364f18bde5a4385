"""The server's logic on the real transformers engine and a tiny random model, in process (no HTTP): what a
scripted engine cannot show."""

import asyncio

import pytest

from tunesmith.config import DeployConfig
from tunesmith.serve.chat import create_chat_completion
from tunesmith.serve.completion import create_completion
from tunesmith.serve.protocol import ChatCompletionRequest, CompletionRequest
from tunesmith.serve.serving import Serving

USER = [{"role": "user", "content": "say hello"}]


@pytest.fixture
def engine(tiny_model):
    from tunesmith.infer import load_engine

    engine = load_engine("transformers", model=str(tiny_model), device="cpu", dtype="float32")
    yield engine
    engine.shutdown()


def test_the_prompt_is_rendered_once_per_request(engine, monkeypatch):
    template = engine.template_for(None)
    calls = []
    render = template.render_prompt
    monkeypatch.setattr(template, "render_prompt", lambda *a, **kw: calls.append(1) or render(*a, **kw))
    serving = Serving(engine, DeployConfig(max_prompt_tokens=500))
    reply = asyncio.run(create_chat_completion(serving, ChatCompletionRequest(messages=USER, max_tokens=2)))
    assert len(calls) == 1 and reply.usage.prompt_tokens == len(render(USER))
    asyncio.run(create_completion(serving, CompletionRequest(prompt="one two", max_tokens=2)))
    assert len(calls) == 1  # completions tokenize the text, no template
