"""The renderer's promises, per template family: trained tokens are exactly the assistant contents plus their
end-of-turn token, and the inference prompt is a token-for-token prefix of the training rendering."""

import pytest

from real_tokenizers import llama3_style_tokenizer, qwen_tokenizer, smollm2_tokenizer
from tunesmith.errors import TemplateError
from tunesmith.templates import IGNORE, RewritesPastTurns, Template

FAMILIES = {"qwen2.5-chatml": (qwen_tokenizer, "<|im_end|>"), "llama3-style": (llama3_style_tokenizer, "<|eot_id|>"),
            "smollm2": (smollm2_tokenizer, "<|im_end|>")}

CONV = [
    {"role": "system", "content": "You write product requirements."},
    {"role": "user", "content": "Feature: export invoices as CSV."},
    {"role": "assistant", "content": "## Overview\nFinance staff export invoices.\n\n## Requirements\n1. One click."},
    {"role": "user", "content": "再加一个中文版本。"},
    {"role": "assistant", "content": "## 概述\n财务人员可以导出发票。"},
]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    make, end = FAMILIES[request.param]
    return Template(make()), end


def trained_spans(ids, labels):
    """Runs of consecutive trained tokens."""
    spans, current = [], []
    for i, label in zip(ids, labels):
        if label == IGNORE:
            if current:
                spans.append(current)
            current = []
        else:
            assert label == i
            current.append(i)
    return spans + ([current] if current else [])


def test_trained_tokens_are_exactly_the_assistant_turns_and_their_end_token(family):
    template, end = family
    ids, labels = template.render(CONV)
    spans = trained_spans(ids, labels)
    decoded = [template.tokenizer.decode(s) for s in spans]
    assert decoded == [CONV[2]["content"] + end, CONV[4]["content"] + end]
    assert template.end_of_turn == end
    assert template.tokenizer.convert_tokens_to_ids(end) in template.stop_token_ids


def test_inference_prompt_is_a_prefix_of_the_training_ids(family):
    template, _ = family
    ids, _ = template.render(CONV)
    for cut in (2, 4):  # before each assistant turn
        prompt = template.render_prompt(CONV[:cut])
        assert ids[: len(prompt)] == prompt
        full_cut, labels_cut = template.render(CONV[: cut + 1])
        assert labels_cut[len(prompt) - 1] == IGNORE and labels_cut[len(prompt)] != IGNORE  # answer starts right there


def test_loss_false_and_last_turn_only(family):
    template, end = family
    muted = [dict(m) for m in CONV]
    muted[2]["loss"] = False
    ids, labels = template.render(muted)
    assert [template.tokenizer.decode(s) for s in trained_spans(ids, labels)] == [CONV[4]["content"] + end]
    ids_last, labels_last = template.render(CONV, loss_on="last")
    assert labels_last == labels and ids_last == ids  # same cuts, so the same ids as the per-turn rendering
    ids_all, labels_all = template.render(CONV, loss_on="all")
    assert labels_all == ids_all


def test_default_system_prompt_is_used_in_training_and_inference_alike():
    template = Template(qwen_tokenizer(), default_system="You are a PRD writer.")
    text = template.render_text(CONV[1:3])
    assert text.startswith("<|im_start|>system\nYou are a PRD writer.<|im_end|>")
    ids, _ = template.render(CONV[1:3])
    assert ids[: len(template.render_prompt(CONV[1:2]))] == template.render_prompt(CONV[1:2])


def test_a_template_without_an_end_of_turn_token_refuses_to_train():
    tok = smollm2_tokenizer()
    tok.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(TemplateError, match="never learn to stop"):
        Template(tok)


def test_a_template_that_rewrites_past_turns_trains_each_turn_as_it_is_served():
    tok = smollm2_tokenizer()
    # Like Qwen3: earlier answers lose their <think> block once a later turn follows.
    tok.chat_template = (
        "{% for m in messages %}{% set c = m['content'] %}"
        "{% if m['role'] == 'assistant' and not loop.last %}{% set c = c.split('</think>')[-1] %}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + c + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    template = Template(tok)
    conv = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "<think>x</think>b"},
            {"role": "user", "content": "c"}, {"role": "assistant", "content": "<think>y</think>d"}]
    with pytest.raises(RewritesPastTurns):  # one sequence cannot hold turn 1 both with and without its reasoning
        template.render(conv)
    samples = template.render_samples(conv)
    assert len(samples) == 2
    for (ids, labels), turn in zip(samples, (1, 3)):
        prompt = template.render_prompt(conv[:turn])  # what deploy sends at that turn
        assert ids[: len(prompt)] == prompt and all(label == IGNORE for label in labels[: len(prompt)])
        assert tok.decode(ids[len(prompt):]) == conv[turn]["content"] + "<|im_end|>"
        assert labels[len(prompt):] == ids[len(prompt):]
    assert "<think>x</think>" not in tok.decode(samples[1][0])  # turn 3's prompt shows turn 1 as served then
    ids, labels = template.render(conv, loss_on="last")  # one trained turn: one sequence still works
    assert [(ids, labels)] == template.render_samples(conv, loss_on="last")


def test_save_and_load_keep_template_and_system(tmp_path):
    template = Template(qwen_tokenizer(), default_system="Be brief.")
    template.save(tmp_path)
    again = Template.load(tmp_path)
    assert again.default_system == "Be brief."
    assert again.render(CONV) == template.render(CONV)


def test_tool_call_arguments_render_the_same_as_string_or_object():
    tok = qwen_tokenizer()
    tok.chat_template = (  # renders arguments with tojson, as Qwen2.5's and Llama 3's templates do
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] }}"
        "{% for c in m.get('tool_calls') or [] %}<tool_call>{{ c.function.arguments | tojson }}</tool_call>{% endfor %}"
        "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    template = Template(tok)
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    as_object = [{"role": "user", "content": "weather?"},
                 {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": call}]}]
    as_string = [as_object[0], {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}]
    assert template.render_text(as_object) == template.render_text(as_string)
    assert '<tool_call>{"city": "Paris"}</tool_call>' in template.render_text(as_string)
