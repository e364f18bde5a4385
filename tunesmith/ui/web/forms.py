"""Forms generated from the commands' pydantic configs: the same fields, defaults and help as `--help`, so the web UI
can never offer an option the CLI lacks (or miss one it has).

    form = Form(SFTConfig, main=("model", "dataset", "tuner", ...))    # builds gradio components inside a Blocks
    cfg, values = form.config(workspace, *component_values)            # validated; values = what differs from defaults
    command_line("sft", values), yaml_text(values)                     # what the form will run, shown before Start
"""

from __future__ import annotations

import shlex
import types
import typing
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel

from tunesmith.config.load import validate


@dataclass
class Field:
    key: str            # dotted: lora.rank
    kind: str           # choice | bool | tristate | number | text | list | mapping
    default: Any
    help: str
    choices: tuple = ()


def fields_of(cls: type[BaseModel], prefix: str = "") -> list[Field]:
    """Every leaf field of a config, sections flattened to dotted keys, in declaration order."""
    out = []
    for name, info in cls.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += fields_of(ann, f"{prefix}{name}.")
            continue
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        out.append(_field(f"{prefix}{name}", ann, default, info.description or ""))
    return out


def _field(key: str, ann: Any, default: Any, help: str) -> Field:
    args = typing.get_args(ann) if isinstance(ann, types.UnionType) or typing.get_origin(ann) is typing.Union else (ann,)
    literals = [a for a in args if typing.get_origin(a) is typing.Literal]
    if literals and len([a for a in args if a is not type(None)]) == 1:
        return Field(key, "choice", default, help, tuple(typing.get_args(literals[0])))
    if bool in args:  # true/false, auto where unset (None) is allowed, and the field's own words (offload)
        words = tuple(w for lit in literals for w in typing.get_args(lit))
        if type(None) not in args and not words:
            return Field(key, "bool", default, help)
        auto = ("auto",) if type(None) in args or "auto" in words else ()
        return Field(key, "tristate", default, help, auto + ("true", "false") + tuple(w for w in words if w != "auto"))
    if any(typing.get_origin(a) is list for a in args):
        return Field(key, "list", default, help)
    if any(a is dict or typing.get_origin(a) is dict for a in args):
        return Field(key, "mapping", default, help)
    if any(a in (int, float) for a in args):
        return Field(key, "number", default, help)
    return Field(key, "text", default, help)


class Form:
    """Gradio components for a config class; `main` keys are shown, the others folded under "Advanced"."""

    def __init__(self, cls: type[BaseModel], main: tuple[str, ...], hidden: tuple[str, ...] = (), name: str = "form"):
        import gradio as gr

        self.cls = cls
        self.fields = [f for f in fields_of(cls) if f.key not in hidden]
        self.components: list[Any] = []
        shown = {k: i for i, k in enumerate(main)}
        ordered = sorted((f for f in self.fields if f.key in shown), key=lambda f: shown[f.key])
        rest = [f for f in self.fields if f.key not in shown]
        self.fields = ordered + rest
        for f in ordered:
            self.components.append(_component(gr, f, name))
        with gr.Accordion("Advanced", open=False):
            for f in rest:
                self.components.append(_component(gr, f, name))

    def values(self, *raw: Any) -> dict[str, Any]:
        """What the user changed from the defaults, as nested config values."""
        out: dict[str, Any] = {}
        for f, value in zip(self.fields, raw):
            value = _parse(f, value)
            if value != f.default and not (value in (None, "", []) and f.default in (None, "", [])):
                node = out
                *sections, leaf = f.key.split(".")
                for s in sections:
                    node = node.setdefault(s, {})
                node[leaf] = value
        return out

    def config(self, *raw: Any) -> tuple[BaseModel, dict[str, Any]]:
        values = self.values(*raw)
        return validate(self.cls, values), values


def _component(gr: Any, f: Field, form: str) -> Any:
    """One input, with an element id `<form>-<key>` (dots as dashes) that the browser test finds it by."""
    label, info = f.key, f.help[:300]
    elem = {"elem_id": f"{form}-{f.key.replace('.', '-').replace('_', '-')}", "label": label, "value": shown(f)}
    if f.kind == "choice":
        return gr.Dropdown(list(f.choices), info=info, **elem)
    if f.kind == "bool":
        return gr.Checkbox(info=info, **elem)
    if f.kind == "tristate":
        return gr.Dropdown(list(f.choices), info=info, **elem)
    hint = {"list": " (comma-separated)", "mapping": " (a mapping: {key: value, ...})"}.get(f.kind, "")
    return gr.Textbox(info=info + hint, **elem)


def shown(f: Field) -> Any:
    """What a field's input shows before the user touches it (_parse reads it back as the default)."""
    if f.kind in ("choice", "bool"):
        return bool(f.default) if f.kind == "bool" else f.default
    if f.kind == "tristate":
        return _tristate(f.default)
    if f.kind == "list":
        return ", ".join(map(str, f.default)) if isinstance(f.default, list) else (f.default or "")
    if f.kind == "mapping":
        return yaml.safe_dump(f.default, default_flow_style=True).strip() if f.default else ""
    return "" if f.default is None else str(f.default)


def _tristate(value: Any) -> str:
    return "auto" if value is None else value if isinstance(value, str) else "true" if value else "false"


def _parse(f: Field, value: Any) -> Any:
    """A component's value as the config reads it (text fields go through YAML, as flags do)."""
    if f.kind in ("choice", "bool"):
        return value
    if f.kind == "tristate":
        if value in ("true", "false"):
            return value == "true"
        if value in ("auto", None):  # unset, unless the config spells auto out (plan's gradient_checkpointing)
            return "auto" if f.default == "auto" else None
        return value  # a word of the field's own: offload
    if f.kind == "list":
        items = [_number(v.strip()) for v in str(value or "").replace("\n", ",").split(",") if v.strip()]
        if isinstance(f.default, str) and items in ([], [f.default]):  # a list field whose default is a word (all-linear)
            return f.default
        return items
    text = str(value if value is not None else "").strip()
    if text == "":
        return None if f.default is None else f.default
    if f.kind == "mapping":  # YAML flow or JSON; anything else goes to validation, which names the field
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text
    if f.kind == "number":
        return _number(text)
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if isinstance(parsed, (dict, list)) else parsed


def _number(text: str) -> Any:
    """8 -> 8, 1e-05 -> 1e-05 (YAML 1.1 reads exponents without a dot as text), anything else unchanged."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


# -----------------------------------------------------------------------------
# What a form runs


def flags(values: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key, value in values.items():
        if isinstance(value, dict):
            out += flags(value, f"{prefix}{key}.")
            continue
        flag = "--" + (prefix + key).replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False:
            out.append("--no-" + (prefix + key).replace("_", "-") if "." not in prefix + key else f"{flag}=false")
        elif isinstance(value, list):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out


def command_line(command: str, values: dict[str, Any]) -> str:
    words = command.split() + flags(values)
    return "tunesmith " + shlex.join(words)


def yaml_text(values: dict[str, Any]) -> str:
    return yaml.safe_dump(values, sort_keys=False, allow_unicode=True)
