"""tool_parsers.py: Hermes/Qwen and Llama-3 tool calls found in answer text; plain text left alone."""

import json

import pytest

from tunesmith.serve.tool_parsers import call_start, parse_tool_calls

NAMES = {"get_weather", "search"}


def args(call):
    return json.loads(call.arguments)


def test_hermes_single_and_parallel_calls_with_content_before():
    text = ('I will look both up.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "search", "arguments": {"q": "fjords", "n": 3}}\n</tool_call>')
    found = parse_tool_calls(text, NAMES)
    assert found.content == "I will look both up."
    assert [(c.name, args(c)) for c in found.calls] == [("get_weather", {"city": "Oslo"}), ("search", {"q": "fjords", "n": 3})]
    assert found.calls[0].id != found.calls[1].id and found.calls[0].id.startswith("call_")


def test_hermes_unclosed_last_block_and_string_arguments():
    found = parse_tool_calls('<tool_call>{"name": "search", "arguments": "{\\"q\\": \\"x\\"}"}', NAMES)
    assert found.content is None and args(found.calls[0]) == {"q": "x"}


def test_hermes_broken_json_stays_text():
    assert parse_tool_calls('<tool_call>{"name": "search", "arguments": {"q": </tool_call>', NAMES) is None


@pytest.mark.parametrize("text", [
    '{"name": "get_weather", "parameters": {"city": "Oslo"}}',
    '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}',
    '  \n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n',
])
def test_llama3_json_call(text):
    found = parse_tool_calls(text, NAMES)
    assert found.content is None and [(c.name, args(c)) for c in found.calls] == [("get_weather", {"city": "Oslo"})]


def test_llama3_several_calls_joined_by_semicolons():
    text = '{"name": "get_weather", "parameters": {"city": "Oslo"}}; {"name": "search", "parameters": {"q": "x"}}'
    assert [c.name for c in parse_tool_calls(text, NAMES).calls] == ["get_weather", "search"]


@pytest.mark.parametrize("text", [
    "The weather in Oslo is sunny.",
    '{"name": "unknown_tool", "parameters": {}}',  # a JSON answer, not one of the tools
    '{"name": "get_weather", "parameters": {"city": "Oslo"}} and then some text',
    '{"city": "Oslo"}',
    "",
])
def test_plain_text_is_not_a_call(text):
    assert parse_tool_calls(text, NAMES) is None


@pytest.mark.parametrize("text, start", [
    ("Hello", None),
    ("Hello <tool_call>{", 6),
    ("Hello <tool", 6),  # may become a tag: hold it back
    ("Hello <toolbox", None),
    ("   ", 0),  # could still open a JSON call
    ('{"name"', 0),
    ("<|python", 0),
])
def test_call_start_marks_what_to_hold_back_while_streaming(text, start):
    assert call_start(text) == start
