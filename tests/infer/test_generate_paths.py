"""The generate() paths' streaming (infer/generate_paths.py stream_threaded: response_format, vision models, ReFT,
draft speculation): generate() runs in a worker thread and hands its tokens over one step at a time; a stop string
ends the answer just before it, keeping everything ahead of it."""

import asyncio
from types import SimpleNamespace

import pytest
import torch

from tunesmith.infer.generate_paths import stream_threaded
from tunesmith.infer.types import SamplingParams
from tunesmith.templates import Template

ANSWER = " alpha beta gamma delta epsilon"


@pytest.fixture(scope="module")
def template():
    from tunesmith.models.load import resolve

    return Template.load(resolve("smollm2-135m-instruct"))


def answer(template: Template, params: SamplingParams, steps: list[list[int]]) -> tuple[str, list]:
    """The text stream_threaded streams when generate() brings `steps` (its ids per step), and its Deltas."""

    def generate(choice, streamer):
        streamer.put(torch.tensor([[1, 2, 3]]))  # generate() hands its streamer the prompt first
        for ids in steps:
            if streamer.cancelled:
                break
            streamer.put(torch.tensor(ids))
        streamer.end()

    async def run():
        return [d async for d in stream_threaded(SimpleNamespace(template=template), params, 3, "test", generate)]

    deltas = asyncio.run(run())
    return "".join(d.text for d in deltas), deltas


@pytest.mark.parametrize("stop", ["mma", "gamma", "a delta", "ta eps"])
def test_a_stop_string_keeps_the_text_ahead_of_it(template, stop):
    ids = template.tokenizer.encode(ANSWER, add_special_tokens=False)
    for step in (1, 2):  # one id a step (sampling), several (an assisted step that accepted a draft's run)
        steps = [ids[k:k + step] for k in range(0, len(ids), step)]
        text, deltas = answer(template, SamplingParams(max_tokens=64, stop=[stop]), steps)
        assert text == ANSWER[:ANSWER.index(stop)], (stop, step)
        assert (deltas[-1].finish_reason, deltas[-1].stop) == ("stop", stop)  # which one: Anthropic's stop_sequence


def test_without_a_stop_string_the_whole_answer_streams(template):
    ids = template.tokenizer.encode(ANSWER, add_special_tokens=False)
    text, deltas = answer(template, SamplingParams(max_tokens=len(ids)), [[t] for t in ids])
    assert text == ANSWER
    assert deltas[-1].finish_reason == "length" and deltas[-1].completion_tokens == len(ids)
    assert deltas[-1].stop is None
