"""An Ollama Modelfile beside the GGUF: FROM, a TEMPLATE (Go text/template) that renders the prompts tunesmith trained
on, SYSTEM (the run's default system prompt), and PARAMETERs (stop tokens, context length).

    tunesmith export --adapters runs/prd/final --to ollama --gguf-type q8_0
    ollama create prd -f runs/prd/ollama-q8_0/Modelfile

The TEMPLATE is not translated from the Jinja chat template (no general translation exists): it is cut from what the
run's own Template renders for probe conversations with marker contents. The text between the markers is what the
template prints between messages:

    P0 <system> P1 <user> P2 <assistant> P3 <user> P4        (with a system prompt; P4 ends with the assistant header)
    Q0 <user> ...                                             (without one: Q0 holds any default system block)

and the Go template prints exactly those pieces around .System and each message's .Content. Before writing, the pieces
are checked against the Template on conversations of 1 to 3 turns, with and without a system prompt: a template that
renders a turn differently by position (one that moves the system prompt into the last user turn, or drops past
reasoning) fails the check and no Modelfile is written for it. Tool calls are not in the TEMPLATE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import TemplateError

MARK = {"system": "TSMSYSTEMQ", "user": "TSMUSERQ{}", "assistant": "TSMASSISTANTQ{}"}


@dataclass
class Pieces:
    p0: str  # start, before the system prompt
    p1: str  # system prompt -> first user message
    q0: str  # start without a system prompt -> first user message
    p2: str  # user -> assistant
    p3: str  # assistant -> user
    p4: str  # last user message -> where the answer starts

    def expand(self, messages: list[dict]) -> str:
        """What the Go template prints for `messages` (the TEMPLATE below, written out in Python)."""
        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        turns = [m for m in messages if m["role"] != "system"]
        out = f"{self.p0}{system}{self.p1}" if system else self.q0
        for i, m in enumerate(turns):
            last = i == len(turns) - 1
            if m["role"] == "user":
                out += m["content"] + (self.p4 if last else self.p2)
            elif m["role"] == "assistant":
                out += m["content"] + ("" if last else self.p3)
        return out


def conversation(turns: int, system: bool, marks: bool = True, label: str = "") -> list[dict]:
    msgs = [{"role": "system", "content": MARK["system"] if marks else f"You answer briefly{label}."}] if system else []
    for t in range(1, turns + 1):
        msgs.append({"role": "user", "content": MARK["user"].format(t) if marks else f"Question {t}{label}?"})
        msgs.append({"role": "assistant", "content": MARK["assistant"].format(t) if marks else f"Answer {t}{label}."})
    return msgs[:-1]  # ends with a user turn: the prompt asks for the next answer


def cut(template: Any) -> Pieces:
    """The pieces, from probe renderings; TemplateError when the template is not message-by-message."""
    def split(text: str, marks: list[str]) -> list[str]:
        parts = []
        for mark in marks:
            if text.count(mark) != 1:
                raise TemplateError(f"the chat template does not print each message once (marker {mark})")
            before, text = text.split(mark)
            parts.append(before)
        return parts + [text]

    render = template.render_text
    with_system = render(conversation(2, True), add_generation_prompt=True)
    p0, p1, p2, p3, p4 = split(with_system, [MARK["system"], "TSMUSERQ1", "TSMASSISTANTQ1", "TSMUSERQ2"])
    q0 = split(render(conversation(1, False), add_generation_prompt=True), ["TSMUSERQ1"])[0]
    pieces = Pieces(p0, p1, q0, p2, p3, p4)
    for turns in (1, 2, 3):
        for system in (True, False):
            msgs = conversation(turns, system, marks=False, label=f" {turns}{system}")
            if pieces.expand(msgs) != render(msgs, add_generation_prompt=True):
                raise TemplateError("the chat template renders a turn differently by its position in the conversation "
                                    f"({turns} turn(s), system prompt {system}); an Ollama TEMPLATE of fixed pieces "
                                    "cannot match it. Use --to gguf and write the TEMPLATE by hand")
    return pieces


def go_string(text: str) -> str:
    """Literal text inside a Go template: only `{{` needs escaping."""
    return text.replace("{{", '{{ "{{" }}')


def go_template(p: Pieces) -> str:
    s = go_string
    return (
        f'{{{{- if .System }}}}{s(p.p0)}{{{{ .System }}}}{s(p.p1)}{{{{ else }}}}{s(p.q0)}{{{{ end }}}}'
        '{{- range $i, $_ := .Messages }}'
        '{{- $last := eq (len (slice $.Messages $i)) 1 }}'
        f'{{{{- if eq .Role "user" }}}}{{{{ .Content }}}}{{{{ if $last }}}}{s(p.p4)}{{{{ else }}}}{s(p.p2)}{{{{ end }}}}'
        f'{{{{- else if eq .Role "assistant" }}}}{{{{ .Content }}}}{{{{ if not $last }}}}{s(p.p3)}{{{{ end }}}}'
        '{{- end }}'
        '{{- end }}'
    )


def quote(text: str) -> str:
    if '"""' in text:
        raise TemplateError('the prompt pieces contain """, which a Modelfile cannot quote')
    return f'"""{text}"""'


def modelfile(gguf_name: str, template: Any, context_length: int | None) -> str:
    pieces = cut(template)
    lines = [f"FROM ./{gguf_name}", f"TEMPLATE {quote(go_template(pieces))}"]
    if template.default_system:
        lines.append(f"SYSTEM {quote(template.default_system)}")
    tok = template.tokenizer
    for token_id in template.stop_token_ids:
        text = tok.convert_ids_to_tokens(token_id)
        lines.append(f"PARAMETER stop {quote(text) if chr(34) in text else chr(34) + text + chr(34)}")
    if context_length:
        lines.append(f"PARAMETER num_ctx {context_length}")
    return "\n".join(lines) + "\n"


def write(folder: Path, gguf_name: str, template: Any, context_length: int | None) -> Path:
    path = Path(folder) / "Modelfile"
    path.write_text(modelfile(gguf_name, template, context_length), encoding="utf-8")
    return path
