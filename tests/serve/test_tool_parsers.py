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


# -----------------------------------------------------------------------------
# Formats whose tags are special tokens: the engines decode with skip_special_tokens, so the tags may be gone


@pytest.mark.parametrize("text, ids", [
    ('[TOOL_CALLS]get_weather[CALL_ID]abcdefghi[ARGS]{"city": "Oslo"}', ["abcdefghi"]),
    ('get_weatherabcdefghi{"city": "Oslo"}', ["abcdefghi"]),  # the same, tags dropped
    ('[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}[TOOL_CALLS]search[ARGS]{"q": "x"}', [None, None]),
    ('get_weather{"city": "Oslo"}search{"q": "x"}', [None, None]),
])
def test_mistral_v11_calls_with_or_without_their_tags(text, ids):
    found = parse_tool_calls(text, NAMES)
    assert found.content is None and [c.name for c in found.calls] == ["get_weather", "search"][: len(ids)]
    assert args(found.calls[0]) == {"city": "Oslo"}
    for call, given in zip(found.calls, ids):  # Mistral's template takes back 9-character ids only
        assert call.id == given if given else (len(call.id) == 9 and call.id.isalnum())


@pytest.mark.parametrize("text, content", [
    ('<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Oslo"}<｜tool▁call▁end｜>'
     '<｜tool▁calls▁end｜>', None),
    ('Looking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "Oslo"}\n```'
     '<｜tool▁call▁end｜><｜tool▁calls▁end｜>', "Looking."),  # DeepSeek-V3's older form
])
def test_deepseek_calls(text, content):
    found = parse_tool_calls(text, NAMES)
    assert found.content == content and [(c.name, args(c)) for c in found.calls] == [("get_weather", {"city": "Oslo"})]


@pytest.mark.parametrize("text", [
    ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Oslo"}<|call|>',  # as the template writes
    ' to=functions.get_weathercommentary json{"city": "Oslo"}',  # the same decoded without special tokens
    '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Oslo"}',  # recipient later
    'commentary to=functions.get_weather json{"city": "Oslo"}',
])
def test_gpt_oss_calls(text):
    found = parse_tool_calls(text, NAMES)
    assert found.content is None and [(c.name, args(c)) for c in found.calls] == [("get_weather", {"city": "Oslo"})]


@pytest.mark.parametrize("text", ['<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Oslo"}}]',
                                  '[{"name": "get_weather", "arguments": {"city": "Oslo"}}]'])
def test_granite_calls(text):
    found = parse_tool_calls(text, NAMES)
    assert [(c.name, args(c)) for c in found.calls] == [("get_weather", {"city": "Oslo"})]


@pytest.mark.parametrize("text", [
    "get_weather is one of my tools.",
    'get_weather{"city": "Oslo"} is how I would call it',
    'get_weatherTOOLONGID1{"city": "Oslo"}',
    "We talked about to=functions.get_weather before.",
    "<｜tool▁calls▁begin｜>nothing here",
])
def test_look_alikes_are_not_calls(text):
    assert parse_tool_calls(text, NAMES) is None


@pytest.mark.parametrize("text, start", [
    ("get_wea", 0),  # may be a Mistral-Small call whose tags were dropped: held back
    ("get away", None),
    ("Sure.<｜tool▁calls", 5),
    ("analysis done. to=functions.get", 15),
    ("commentary to=", 0),
])
def test_call_start_with_the_requests_tool_names(text, start):
    assert call_start(text, NAMES) == start
