"""Qwen3 with thinking, on its real template and BPE: reasoning in 2 of 3 turns trains each turn exactly as it is
served (the template drops past reasoning, so each turn is its own sample), labels cover each answer, its <think>
block (empty where the template inserts one) and <|im_end|>; enable_thinking: false renders what the template does."""

from __future__ import annotations

import pytest

from real_tokenizers import family_tokenizer
from tunesmith.infer.common import prompt_ids
from tunesmith.infer.types import GenerationRequest
from tunesmith.models.families import FAMILIES
from tunesmith.templates import IGNORE, Template, split_reasoning

CONV = [{"role": "system", "content": "You count."},
        {"role": "user", "content": "Count to three."},
        {"role": "assistant", "content": "<think>\nThree numbers.\n</think>\n\n1 2 3"},
        {"role": "user", "content": "And to five?"},
        {"role": "assistant", "content": "1 2 3 4 5"},  # no reasoning: the template inserts an empty block
        {"role": "user", "content": "Backwards from two."},
        {"role": "assistant", "content": "<think>\nDown.\n</think>\n\n2 1"}]
EXPECTED = ["<think>\nThree numbers.\n</think>\n\n1 2 3<|im_end|>", "<think>\n\n</think>\n\n1 2 3 4 5<|im_end|>",
            "<think>\nDown.\n</think>\n\n2 1<|im_end|>"]


@pytest.fixture(scope="module")
def tokenizer():
    return family_tokenizer(FAMILIES["qwen3"])


def test_each_turn_with_or_without_reasoning_trains_exactly_as_served(tokenizer):
    template = Template(tokenizer)
    samples = template.render_samples(CONV)
    assert len(samples) == 3
    for (ids, labels), turn, expected in zip(samples, (2, 4, 6), EXPECTED):
        served = prompt_ids(template, GenerationRequest(messages=CONV[:turn]))
        assert ids[: len(served)] == served and set(labels[: len(served)]) == {IGNORE}
        assert labels[len(served):] == ids[len(served):]
        assert tokenizer.decode(ids[len(served):]) == expected
    # the last sample's prompt shows the earlier turns as the template serves them: reasoning dropped
    assert "Three numbers" not in tokenizer.decode(samples[2][0])


def test_the_served_answer_splits_into_reasoning_and_content(tokenizer):
    template = Template(tokenizer)
    served = template.render_prompt(CONV[:6])
    assert split_reasoning(template, served, "<think>\nDown.\n</think>\n\n2 1") == ("Down.", "2 1")
    assert split_reasoning(template, served, "2 1") == (None, "2 1")


def test_enable_thinking_false_renders_what_the_template_renders(tokenizer, tmp_path):
    template = Template(tokenizer, chat_template_kwargs={"enable_thinking": False})
    conv = [{"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "1 2 3"}]
    expected = tokenizer.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert template.render_text(conv[:1], add_generation_prompt=True) == expected
    assert expected.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    (ids, labels), = template.render_samples(conv)
    assert tokenizer.decode([i for i, l in zip(ids, labels) if l != IGNORE]) == "1 2 3<|im_end|>"
    assert split_reasoning(template, template.render_prompt(conv[:1]), "1 2 3") == (None, "1 2 3")
    template.save(tmp_path)  # the kwargs training used travel with the weights
    assert Template.load(tmp_path).render_prompt(conv[:1]) == template.render_prompt(conv[:1])
    # a request may override them for itself
    assert template.render_prompt(conv[:1], chat_template_kwargs={"enable_thinking": True}) == \
        Template(tokenizer).render_prompt(conv[:1])
    with pytest.raises(Exception, match="enable_thinking"):  # reasoning in a row that trains without thinking
        template.render_samples([conv[0], {"role": "assistant", "content": "<think>\nx\n</think>\n\n1 2 3"}])
