"""Reasoning out of chat answers, and chat_template_kwargs per request, with Qwen3's real template (and the real
Qwen BPE) rendering the prompts: the answer text is scripted, the split is the server's. vLLM and DeepSeek return the
<think> part as message.reasoning_content and delta.reasoning_content; a request's chat_template_kwargs go over the
deploy's and the run's (the served template's own)."""

import asyncio
import json

import pytest
from real_tokenizers import family_tokenizer
from scripted_engine import ScriptedEngine

from tunesmith.config import DeployConfig
from tunesmith.infer.common import override_templates, prompt_ids, reasoning_split
from tunesmith.models.families import FAMILIES
from tunesmith.serve.chat import create_chat_completion
from tunesmith.serve.errors import APIError
from tunesmith.serve.protocol import ChatCompletionRequest
from tunesmith.serve.serving import Serving
from tunesmith.templates import Template

USER = [{"role": "user", "content": "say hello"}]
THOUGHT = ["<think>", "\nI should", " greet.\n", "</think>", "\n\n", "Hello", "!"]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


class TemplateEngine(ScriptedEngine):
    """Scripted answers; prompts rendered by a real Template, and its reasoning split, as the real engines do."""

    def __init__(self, template: Template, pieces):
        super().__init__(pieces, names=("qwen3",))
        self.template = template

    def prompt_ids(self, request):
        self._check(request)
        if request.prompt_ids is not None:
            return list(request.prompt_ids)
        self.renders += 1
        return prompt_ids(self.template, request)

    def reasoning(self, request):
        return reasoning_split(self.template, request)


@pytest.fixture(scope="module")
def qwen3_tokenizer():
    return family_tokenizer(FAMILIES["qwen3"])


@pytest.fixture
def qwen3(qwen3_tokenizer):
    return Template(qwen3_tokenizer)  # one per test: the deploy default is set on it


def chat(engine, **body):
    serving = Serving(engine, DeployConfig())
    return asyncio.run(create_chat_completion(serving, ChatCompletionRequest(messages=USER, **body)))


def events(engine, **body) -> list[dict]:
    async def go():
        stream = await create_chat_completion(Serving(engine, DeployConfig()),
                                              ChatCompletionRequest(messages=USER, stream=True, **body))
        try:
            return [line async for line in stream]
        finally:
            await stream.aclose()

    return [json.loads(line[6:-2]) for line in asyncio.run(go()) if line != "data: [DONE]\n\n"]


def joined(chunks: list[dict], key: str, index: int = 0) -> str:
    return "".join(c["choices"][0]["delta"].get(key) or "" for c in chunks
                   if c["choices"] and c["choices"][0]["index"] == index)


def test_reasoning_content_is_split_out_of_the_answer(qwen3):
    message = chat(TemplateEngine(qwen3, THOUGHT)).choices[0].message
    assert (message.reasoning_content, message.content) == ("I should greet.", "Hello!")


def test_streamed_reasoning_arrives_as_reasoning_content_deltas_before_the_content(qwen3):
    chunks = events(TemplateEngine(qwen3, THOUGHT), n=2)
    for i in (0, 1):  # streamed as generated: the newlines around the reasoning are the model's
        assert (joined(chunks, "reasoning_content", i), joined(chunks, "content", i)) == ("\nI should greet.\n", "Hello!")
    for c in chunks:  # no <think> tag reaches the client, and a reasoning chunk carries no content key
        delta = c["choices"][0]["delta"] if c["choices"] else {}
        assert "<think>" not in json.dumps(delta) and "</think>" not in json.dumps(delta)
        if delta.get("reasoning_content"):
            assert "content" not in delta
    last = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in last] == ["stop", "stop"]


# <think> and </think> are several tokens in most vocabularies (and engines detokenize in pieces): any cut
SPLIT_TAGS = ["<", "th", "ink>\nI sh", "ould greet.\n</", "think", ">\n", "\nHel", "lo <b", ">!"]


def test_streamed_tags_cut_across_chunks_are_still_split(qwen3):
    chunks = events(TemplateEngine(qwen3, SPLIT_TAGS))
    assert (joined(chunks, "reasoning_content"), joined(chunks, "content")) == ("\nI should greet.\n", "Hello <b>!")
    assert not any(tag in json.dumps(c) for c in chunks for tag in ("<think>", "</think>", '"<"', '"th"', "</"))


def test_every_cut_of_an_answer_streams_what_the_whole_answer_splits_into():
    """ReasoningSplit.feed over every way to cut the text in three, and random cuts into many pieces, gives the
    reasoning and content of the whole text (text that only looks like a tag's start is content)."""
    import random

    from tunesmith.templates.reasoning import ReasoningSplit

    text = "<think>\nI should <b>greet</b>.\n</think>\n\nHello <thi</think>!"
    whole = ReasoningSplit(opened=False).whole(text)
    assert whole == ("I should <b>greet</b>.", "Hello <thi</think>!")
    rng = random.Random(0)
    cuts = [[a, b] for a in range(1, len(text)) for b in range(a + 1, len(text))]
    cuts += [sorted(rng.sample(range(1, len(text)), rng.randint(3, 20))) for _ in range(300)]
    for cut in cuts:
        split, reasoning, content = ReasoningSplit(opened=False), "", ""
        for a, b in zip([0, *cut], [*cut, len(text)]):
            r, c = split.feed(text[a:b])
            reasoning, content = reasoning + r, content + c
        r, c = split.feed("", final=True)
        assert ((reasoning + r).strip("\n") or None, content + c) == whole, cut


def test_a_tool_call_after_reasoning_is_parsed_from_the_content(qwen3):
    pieces = ["<think>\nCall it.\n</think>\n\n", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}',
              "\n</tool_call>"]
    choice = chat(TemplateEngine(qwen3, pieces), tools=TOOLS).choices[0]
    assert (choice.finish_reason, choice.message.reasoning_content, choice.message.content) == \
        ("tool_calls", "Call it.", None)
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Oslo"}
    chunks = events(TemplateEngine(qwen3, pieces), tools=TOOLS)
    assert joined(chunks, "reasoning_content").strip() == "Call it." and joined(chunks, "content") == ""
    calls = [c["choices"][0]["delta"]["tool_calls"] for c in chunks if c["choices"][0]["delta"].get("tool_calls")]
    assert [call[0]["function"]["name"] for call in calls] == ["get_weather"]


def test_request_kwargs_go_over_the_deploy_default_which_goes_over_the_run(qwen3):
    override_templates([qwen3], None, {"enable_thinking": False})  # deploy --chat-template-kwargs, as engines load
    engine = TemplateEngine(qwen3, ["Hello", "!"])
    message = chat(engine).choices[0].message  # thinking off: the prompt closes an empty think block
    assert qwen3.tokenizer.decode(engine.prompt_ids(engine.requests[-1])).endswith("<think>\n\n</think>\n\n")
    assert (message.reasoning_content, message.content) == (None, "Hello!")

    engine = TemplateEngine(qwen3, THOUGHT)
    message = chat(engine, chat_template_kwargs={"enable_thinking": True}).choices[0].message
    assert engine.requests[-1].chat_template_kwargs == {"enable_thinking": True}
    assert not qwen3.tokenizer.decode(engine.prompt_ids(engine.requests[-1])).rstrip().endswith("</think>")
    assert (message.reasoning_content, message.content) == ("I should greet.", "Hello!")


def test_kwargs_that_would_replace_the_templates_own_arguments_are_400(qwen3):
    with pytest.raises(APIError) as err:
        chat(TemplateEngine(qwen3, THOUGHT), chat_template_kwargs={"add_generation_prompt": False})
    assert err.value.status == 400 and err.value.param == "chat_template_kwargs"
    assert "add_generation_prompt" in str(err.value)


def test_models_without_reasoning_keep_their_text(qwen3):
    qwen25 = Template(family_tokenizer(FAMILIES["qwen2.5"]))
    message = chat(TemplateEngine(qwen25, THOUGHT)).choices[0].message
    assert (message.reasoning_content, message.content) == (None, "".join(THOUGHT))


def test_infer_keeps_the_whole_answer_and_adds_its_reasoning(qwen3, tmp_path):
    from tunesmith.config import InferConfig
    from tunesmith.infer import SamplingParams
    from tunesmith.infer.batch import answer_dataset

    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"messages": USER}) + "\n", encoding="utf-8")
    cfg = InferConfig(dataset=[str(data)], output=str(tmp_path / "out.jsonl"))
    out = answer_dataset(TemplateEngine(qwen3, THOUGHT), cfg, SamplingParams(max_tokens=16))
    row = json.loads(out.read_text(encoding="utf-8"))
    assert (row["response"], row["reasoning"]) == ("".join(THOUGHT), "I should greet.")
