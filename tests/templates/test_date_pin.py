"""Templates that print today's date (strftime_now: Granite 3, Mistral-Small, gpt-oss; Llama 3.2+ through
date_string) render the day training ran, pinned as chat_template_kwargs.date_string and saved with the template:
served on a later day, the prompt is still the one trained on."""

import datetime
import json

import pytest
from real_tokenizers import family_tokenizer

from tunesmith.models.families import FAMILIES
from tunesmith.templates import Template

TRAINED, SERVED = datetime.datetime(2026, 3, 2, 9), datetime.datetime(2026, 11, 30, 18)
CONV = [{"role": "user", "content": "What day is it?"}]
DATED = ["granite3", "mistral-small", "gpt-oss"]


@pytest.fixture
def clock(monkeypatch):
    """Sets the day transformers' strftime_now sees."""
    import transformers.utils.chat_template_utils as chat_utils

    class Clock(datetime.datetime):
        now_is = TRAINED

        @classmethod
        def now(cls, tz=None):
            return cls.now_is

    monkeypatch.setattr(chat_utils, "datetime", Clock)
    monkeypatch.setattr("tunesmith.templates.chat._today", lambda: Clock.now_is.date())
    return Clock


@pytest.mark.parametrize("name", DATED)
def test_a_pinned_date_is_served_on_a_later_day(name, clock, tmp_path):
    template = Template(family_tokenizer(FAMILIES[name]))
    unpinned = template.render_prompt(CONV)
    assert template.pin_date() == "02 Mar 2026"
    trained = template.render_prompt(CONV)
    assert trained == unpinned  # pinning the training day changes nothing on that day
    template.save(tmp_path)

    clock.now_is = SERVED
    assert template.render_prompt(CONV, chat_template_kwargs={"date_string": None}) != trained  # it would drift
    served = Template.load(tmp_path)
    assert served.chat_template_kwargs["date_string"] == "02 Mar 2026"
    assert served.render_prompt(CONV) == trained


def test_templates_without_a_date_are_left_alone():
    llama31 = Template(family_tokenizer(FAMILIES["llama3"]))  # Llama 3.1 prints a fixed "26 Jul 2024"
    assert llama31.pin_date() is None and "date_string" not in llama31.chat_template_kwargs


def test_llama32_reads_date_string_itself_and_a_given_date_is_kept(clock):
    """Llama 3.2/3.3 ship 3.1's template with strftime_now("%d %b %Y") where 3.1 has a fixed date."""
    tok = family_tokenizer(FAMILIES["llama3"])
    fixed = '{%- set date_string = "26 Jul 2024" %}'
    assert fixed in tok.chat_template
    tok.chat_template = tok.chat_template.replace(fixed, '{%- if strftime_now is defined %}{%- set date_string = '
                                                  'strftime_now("%d %b %Y") %}{%- else %}' + fixed + '{%- endif %}')
    template = Template(tok)
    assert "Today Date: 02 Mar 2026" in template.render_text(CONV, True)
    template = Template(tok, chat_template_kwargs={"date_string": "2025-01-15"})
    assert template.pin_date() == "2025-01-15"  # given: kept, printed as given
    clock.now_is = SERVED
    assert "Today Date: 2025-01-15" in template.render_text(CONV, True)


def test_training_pins_the_day_in_the_config_and_a_continued_run_keeps_it(clock, tmp_path):
    from tunesmith.config import SFTConfig
    from tunesmith.train.preflight import load_template

    base = tmp_path / "granite"
    family_tokenizer(FAMILIES["granite3"]).save_pretrained(base)
    (base / "config.json").write_text(json.dumps({"model_type": "granite"}))
    cfg = SFTConfig(model=str(base), dataset=["unused"])
    template, _ = load_template(cfg)
    assert cfg.chat_template_kwargs == {"date_string": "02 Mar 2026"}  # config.yaml records it, ranks read it
    final = tmp_path / "run" / "final"
    template.save(final)
    trained = template.render_prompt(CONV)

    clock.now_is = SERVED
    later = SFTConfig(model=str(base), adapters=str(final), dataset=["unused"])
    continued, _ = load_template(later)
    assert continued.chat_template_kwargs["date_string"] == "02 Mar 2026"
    assert continued.render_prompt(CONV) == trained
