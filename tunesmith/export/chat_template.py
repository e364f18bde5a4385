"""The chat template an export writes: the run's template with what tunesmith adds at render time built in, so plain
transformers, vLLM and llama.cpp render the prompts the model was trained on without tunesmith_template.json.

    tokenizer.chat_template = standalone(template)   # before template.save(folder) or gguf.write

Template adds two things the model's own template does not know (templates/chat.py): the run's default system
prompt (--system), inserted when a conversation has none, and the saved chat_template_kwargs (enable_thinking,
date_string ...), passed on every render. The standalone template does both itself, as defaults: a conversation that
has a system message, or a request that passes a kwarg, renders as it does with the model's template. Template.load
of the export then renders exactly as before: it inserts the same system message and passes the same kwargs.
"""

from __future__ import annotations

import json
from typing import Any

from tunesmith.errors import ConfigError
from tunesmith.templates.chat import _dated


def standalone(template: Any) -> str:
    """The tokenizer's chat template with the run's default system prompt and chat_template_kwargs built in."""
    source = template.tokenizer.chat_template
    kwargs = template.chat_template_kwargs
    if kwargs.get("date_string") and "strftime_now" in source:
        source = _dated(source, str(kwargs["date_string"]))  # as Template renders it: the day training ran
    for name in kwargs:
        if not name.isidentifier():
            raise ConfigError(f"chat_template_kwargs: {name!r} is not a name a chat template can read; retrain "
                              "without it")
    head = "".join(f"{{%- if {name} is not defined %}}{{%- set {name} = {literal(value, name)} %}}{{%- endif %}}"
                   for name, value in kwargs.items())
    if template.default_system:
        system = literal({"role": "system", "content": template.default_system}, "system")
        # `set` at the top level replaces the caller's messages for the rest of the template (an `if` opens no scope)
        head += (f"{{%- if not messages or messages[0]['role'] != 'system' %}}"
                 f"{{%- set messages = [{system}] + messages %}}{{%- endif %}}")
    return head + source


def literal(value: Any, name: str) -> str:
    """A Jinja expression for a JSON value (json.dumps writes null, which Jinja reads as an undefined name)."""
    if value is None or isinstance(value, bool):
        return {None: "none", True: "true", False: "false"}[value]
    if isinstance(value, (int, float, str)):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a Jinja string literal
    if isinstance(value, list):
        return "[" + ", ".join(literal(v, name) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {literal(v, name)}" for k, v in value.items()) + "}"
    raise ConfigError(f"chat_template_kwargs: {name}={value!r} cannot be written into the exported chat template "
                      "(numbers, text, true/false, lists and mappings only); retrain without it")
