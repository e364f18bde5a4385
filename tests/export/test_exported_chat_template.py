"""The exported chat template renders what the run trained on without tunesmith: transformers' apply_chat_template of
an export (and the GGUF's tokenizer.chat_template) gives the ids tunesmith's Template gives, the run's --system
included when a conversation has none (the outside tester's merged model and GGUF printed the base model's default
system prompt instead)."""

import json

import gguf
import pytest
from export_system import SYSTEM
from transformers import AutoTokenizer

from tunesmith import ExportConfig, export
from tunesmith.export.chat_template import standalone
from tunesmith.templates import Template

FAST = {"greedy_prompts": 0, "eval_tokens": 16}
ASK = [{"role": "user", "content": "code for river"}]
ASKED_WITH_SYSTEM = [{"role": "system", "content": "You answer briefly."}, *ASK]
TALK = [*ASK, {"role": "assistant", "content": "CODE river OK"}, {"role": "user", "content": "and for stone?"}]


def plain_ids(folder, messages, **kwargs):
    """What transformers (and vLLM, which calls it) renders from the folder alone."""
    ids = AutoTokenizer.from_pretrained(folder).apply_chat_template(messages, add_generation_prompt=True, **kwargs)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@pytest.fixture(scope="module")
def merged_with_system(system_run, tmp_path_factory):
    return export(ExportConfig(adapters=str(system_run / "final"), output=str(tmp_path_factory.mktemp("x") / "m"),
                               **FAST))


def test_the_merged_folder_renders_the_trained_system_prompt(system_run, merged_with_system):
    trained = Template.load(system_run / "final")  # what infer --adapters renders
    assert trained.default_system == SYSTEM
    for messages in (ASK, ASKED_WITH_SYSTEM, TALK):
        assert plain_ids(merged_with_system, messages) == trained.render_prompt(messages)
    assert SYSTEM in trained.tokenizer.decode(plain_ids(merged_with_system, ASK))
    assert SYSTEM not in trained.tokenizer.decode(plain_ids(merged_with_system, ASKED_WITH_SYSTEM))
    # tunesmith reading the export renders as before: the system message is not added twice
    assert Template.load(merged_with_system).render_prompt(ASK) == trained.render_prompt(ASK)


def test_the_gguf_carries_the_same_chat_template(system_run, merged_with_system, tmp_path):
    out = export(ExportConfig(adapters=str(system_run / "final"), to="gguf", gguf_type="q8_0",
                              output=str(tmp_path / "g"), **FAST))
    field = gguf.GGUFReader(out / "toysys-q8_0.gguf").get_field("tokenizer.chat_template")
    written = bytes(field.parts[field.data[0]]).decode("utf-8")
    assert written == AutoTokenizer.from_pretrained(merged_with_system).chat_template
    assert json.dumps(SYSTEM) in written  # a Jinja string literal


def test_without_system_the_chat_template_is_the_runs_own(lora_run, tmp_path):
    out = export(ExportConfig(adapters=str(lora_run / "final"), output=str(tmp_path / "m"), **FAST))
    run_template = AutoTokenizer.from_pretrained(lora_run / "final").chat_template
    assert AutoTokenizer.from_pretrained(out).chat_template == run_template
    assert plain_ids(out, ASK) == Template.load(lora_run / "final").render_prompt(ASK)


def test_saved_chat_template_kwargs_are_the_defaults(lora_run):
    tokenizer = AutoTokenizer.from_pretrained(lora_run / "final")
    tokenizer.chat_template = ("{% if not enable_thinking %}[NO THINK]{% endif %}{{ style | default('') }}"
                               + tokenizer.chat_template)
    template = Template(tokenizer, chat_template_kwargs={"enable_thinking": False, "style": 'say "hi"\n'})
    plain = AutoTokenizer.from_pretrained(lora_run / "final")
    plain.chat_template = standalone(template)
    text = plain.apply_chat_template(ASK, add_generation_prompt=True, tokenize=False)
    assert text == template.render_text(ASK, add_generation_prompt=True)
    assert text.startswith('[NO THINK]say "hi"\n')
    # a request's own value still wins, as it does in tunesmith
    assert not plain.apply_chat_template(ASK, add_generation_prompt=True, tokenize=False,
                                         enable_thinking=True).startswith("[NO THINK]")
