"""Streamed chunks written from a template (serving.Framing) instead of pydantic models per token: the same bytes as
pydantic's dump, and, when the engine hands several tokens over in one Delta (its outputs drained together while
the client was behind), the stream still carries every piece of text once, in order, with the tokens counted."""

import asyncio
import json

from scripted_engine import ScriptedEngine

from tunesmith.config import DeployConfig
from tunesmith.infer.types import Delta
from tunesmith.serve.chat import create_chat_completion
from tunesmith.serve.completion import create_completion
from tunesmith.serve.protocol import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
)
from tunesmith.serve.serving import Framing, Serving, sse

# quotes, backslashes, control characters, a line separator, non-ASCII and an astral character, and the
# template's own marks as text
TEXTS = ["", "plain", 'say "hi"\\n', "a\nb\tc\r\x00\x01\x1f\x7f", "\u2028é😀 中文", "987654321",
         "tunesmith-text-mark", '{"index":1}']


def test_template_chunks_are_byte_for_byte_pydantics():
    for model in ("m", 'odd "model"\\name é'):
        for exclude in (None, {"usage"}):
            def chat(i, text, model=model):
                return ChatCompletionChunk(id="chatcmpl-1", created=7, model=model,
                                           choices=[ChatChunkChoice(index=i, delta=DeltaMessage(content=text))])

            def completion(i, text, model=model):
                return CompletionResponse(id="cmpl-1", created=7, model=model,
                                          choices=[CompletionChoice(text=text, index=i)])

            for sample in (chat, completion):
                framing = Framing(sample, exclude)
                for i in (0, 3, 127):
                    for text in TEXTS:
                        assert framing.text(i, text) == sse(sample(i, text).model_dump_json(exclude=exclude))


class CoalescingEngine(ScriptedEngine):
    """Hands its tokens over in runs of 1, 3, 2, 4 ... per Delta, as the batching engine does for a stream whose
    outputs queued up; completion_tokens counts tokens, not Deltas."""

    TOKENS = ["The", " quick", ' "brown"', " fox\n", "é", "😀", " jumps", "\\", " over", "\x01", " the", " lazy",
              " dog", "."]

    async def stream(self, request):
        self.requests.append(request)
        p, prompt = request.params, len(self.prompt_ids(request))
        for i in range(p.n):
            tokens = self.TOKENS[i:][: p.max_tokens]
            at, run = 0, 1
            while at < len(tokens):
                piece = tokens[at:at + run]
                at += len(piece)
                finish = ("length" if at >= p.max_tokens else "stop") if at >= len(tokens) else None
                yield Delta(i, "".join(piece), finish, prompt_tokens=prompt, completion_tokens=at)
                run = run % 4 + 1
                await asyncio.sleep(0)


def collect(started) -> list:
    """The parsed chunks of the stream that `started` (a create_... coroutine) answers."""

    async def go():
        stream = await started
        try:
            return [line async for line in stream]
        finally:
            await stream.aclose()

    lines = asyncio.run(go())
    assert lines[-1] == "data: [DONE]\n\n"
    return [json.loads(line[6:-2]) for line in lines[:-1]]


def test_coalesced_deltas_stream_every_piece_once_in_order_with_token_counts():
    engine = CoalescingEngine()
    serving = Serving(engine, DeployConfig())
    expected = ["".join(CoalescingEngine.TOKENS[i:]) for i in range(2)]
    counts = [len(CoalescingEngine.TOKENS) - i for i in range(2)]
    body = {"model": "base", "messages": [{"role": "user", "content": "go"}], "n": 2, "max_tokens": 50}

    whole = asyncio.run(create_chat_completion(serving, ChatCompletionRequest(**body)))
    assert [c.message.content for c in whole.choices] == expected
    assert whole.usage.completion_tokens == sum(counts)

    chunks = collect(create_chat_completion(serving, ChatCompletionRequest(
        **body, stream=True, stream_options={"include_usage": True})))
    prompt = len(engine.prompt_ids(engine.requests[-1]))
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": prompt, "completion_tokens": sum(counts), "total_tokens": prompt + sum(counts)}
    for i in range(2):
        mine = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["index"] == i]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["delta"].get("content", "") for c in mine[1:]) == expected[i]
        assert [c["finish_reason"] for c in mine] == [None] * (len(mine) - 1) + ["stop"]

    completion = {"model": "base", "prompt": "go", "max_tokens": 5}
    whole = asyncio.run(create_completion(serving, CompletionRequest(**completion)))
    assert whole.choices[0].text == "".join(CoalescingEngine.TOKENS[:5]) and whole.usage.completion_tokens == 5
    chunks = collect(create_completion(serving, CompletionRequest(
        **completion, stream=True, stream_options={"include_usage": True})))
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == whole.choices[0].text
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 5
