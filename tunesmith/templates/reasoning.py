"""Reasoning split out of an answer, as vLLM's reasoning parsers and DeepSeek's API return it.

    split = ReasoningSplit.for_template(template, prompt_ids)   # None: this template writes no reasoning
    reasoning, content = split.feed(text_delta)                 # while streaming; feed("", final=True) at the end
    reasoning, content = split.whole(text)                      # a whole answer (reasoning None when empty)
    reasoning, content = split_reasoning(template, prompt_ids, whole_text)

Templates that think write `<think>...</think>` before the answer (Qwen3, Qwen3.5, SmolLM3, DeepSeek-R1/V3.1,
GLM-4.5). Some generation prompts already open the block (Qwen3.5, DeepSeek-V3.1 in thinking mode end with
`<think>`), so the model's text starts inside it; others (Qwen3) leave it to the model, and with thinking off they
close an empty block in the prompt, so the text is all answer.
"""

from __future__ import annotations

from typing import Any

OPEN, CLOSE = "<think>", "</think>"


class ReasoningSplit:
    def __init__(self, opened: bool):
        self.state = "reasoning" if opened else "start"  # start: not known yet whether the text opens a block
        self.held = ""  # text that may be the start of a tag still arriving

    @classmethod
    def for_template(cls, template: Any, prompt_ids: list[int]) -> "ReasoningSplit | None":
        source = getattr(template.tokenizer, "chat_template", "") or ""
        if CLOSE not in source:
            return None
        tail = template.tokenizer.decode(prompt_ids[-8:], skip_special_tokens=False).rstrip()
        if tail.endswith(CLOSE):  # thinking off: the prompt holds an empty, closed block
            return None
        return cls(opened=tail.endswith(OPEN))

    def feed(self, text: str, final: bool = False) -> tuple[str, str]:
        """(reasoning, content) of this piece of text."""
        text = self.held + text
        self.held = ""
        reasoning = content = ""
        while text:
            if self.state == "start":
                stripped = text.lstrip()
                if stripped.startswith(OPEN):
                    text, self.state = stripped[len(OPEN):], "reasoning"
                elif OPEN.startswith(stripped) and not final:
                    self.held = text  # "<thi" so far: wait for the rest
                    return reasoning, content
                else:
                    self.state = "content"
            elif self.state == "reasoning":
                at = text.find(CLOSE)
                if at >= 0:
                    reasoning += text[:at]
                    text, self.state = text[at + len(CLOSE):].lstrip("\n"), "after"
                    continue
                keep = _partial_suffix(text, CLOSE) if not final else None
                reasoning += text[:keep]
                self.held = text[keep:] if keep is not None else ""
                return reasoning, content
            elif self.state == "after":  # newlines between </think> and the answer are layout
                text = text.lstrip("\n")
                if text or final:
                    self.state = "content"
            else:
                content += text
                text = ""
        return reasoning, content

    def whole(self, text: str) -> tuple[str | None, str]:
        """(reasoning or None, content) of a whole answer, on a fresh splitter."""
        reasoning, content = self.feed(text, final=True)
        return reasoning.strip("\n") or None, content


def split_reasoning(template: Any, prompt_ids: list[int], text: str) -> tuple[str | None, str]:
    """(reasoning or None, content) of a whole answer."""
    split = ReasoningSplit.for_template(template, prompt_ids)
    return (None, text) if split is None else split.whole(text)


def _partial_suffix(text: str, marker: str) -> int | None:
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return len(text) - k
    return None
