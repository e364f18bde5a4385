"""Dataset rows -> what each model is asked and the answer it is scored against.

Generation rows: any training format; the last assistant turn is the reference, the turns before it the prompt.
Multiple-choice rows: `choices` (a list of texts) and `answer` (a letter "B", the right choice's text, or its 0-based
index, as MMLU on the hub writes it), beside `question` or `messages`:

    {"question": "2 + 2 =", "choices": ["3", "4", "5"], "answer": "B"}
    {"question": "2 + 2 =", "choices": ["3", "4", "5"], "answer": 1}

They are asked with lettered choices and scored by the letter the model writes (`pick_choice`): the same prompt
works for a local model and for an endpoint, and it measures what a user of the chat model would see. Scoring the
log-likelihood of each choice would need prompt log-probabilities, which the Engine interface and OpenAI chat
endpoints do not give.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Any

from tunesmith.data.load import describe_problems, load_rows, raw_rows
from tunesmith.data.rows import Conversation, Problem
from tunesmith.errors import DataError

LETTERS = string.ascii_uppercase
CHOICE_INSTRUCTION = "Answer with the letter of the correct choice."


@dataclass
class Sample:
    messages: list[dict[str, Any]]  # what the model is asked: ends with the user's turn
    reference: str  # generation: the reference answer; multiple choice: the right choice's text
    source: str
    line: int | str
    choices: list[str] = field(default_factory=list)  # empty for generation rows
    answer_index: int | None = None

    @property
    def is_choice(self) -> bool:
        return bool(self.choices)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def load_samples(specs: list[str], limit: int | None = None, skip_bad_rows: bool = False,
                 encoding: str = "utf-8") -> tuple[list[Sample], int]:
    """The samples to score, and how many bad rows were skipped. Bad rows stop here as `file:line: field: problem`."""
    data = load_rows(specs, kind="sft", seed=42, encoding=encoding)
    samples: list[Sample] = []
    for row in data.rows:
        if isinstance(row, Conversation):  # kind="sft" yields only conversations
            sample = to_sample(row, data.problems)
            if sample is not None:
                samples.append(sample)
    problems = _index_out_of_range(specs, data.problems, encoding)
    problems.sort(key=lambda p: (p.source, _line_number(p.line)))
    if problems and not skip_bad_rows:
        hint = ""
        if any(p.field == "answer" and "got int" in p.problem for p in problems):
            hint = ('\nMultiple-choice answers are a letter ("B"), the right choice\'s text, or the 0-based index of a '
                    "choice in `choices`.")
        raise DataError(describe_problems(problems) + hint
                        + "\nFix these rows, or pass --skip-bad-rows to leave them out.")
    if limit is not None:
        samples = samples[:limit] if limit > 0 else samples[limit:]
    if not samples:
        raise DataError(f"{', '.join(specs)}: no rows left to score")
    return samples, len(problems)


def to_sample(conv: Conversation, problems: list[Problem]) -> Sample | None:
    last = max(i for i, m in enumerate(conv.messages) if m["role"] == "assistant")
    prompt = [dict(m) for m in conv.messages[:last]]
    reference = conv.messages[last]["content"]
    if prompt[-1]["role"] != "user":
        problems.append(Problem(conv.source, conv.line, "messages",
                                "the turn before the reference answer must be the user's"))
        return None
    if "choices" not in conv.extra:
        if not reference.strip():
            problems.append(Problem(conv.source, conv.line, "messages",
                                    "the last assistant turn has no text to score against"))
            return None
        return Sample(prompt, reference, conv.source, conv.line)
    choices = conv.extra["choices"]
    if not (isinstance(choices, list) and 2 <= len(choices) <= len(LETTERS)
            and all(isinstance(c, (str, int, float)) for c in choices)):
        problems.append(Problem(conv.source, conv.line, "choices", f"expected a list of 2 to {len(LETTERS)} texts"))
        return None
    choices = [str(c) for c in choices]
    if same := _same_choices(choices):
        problems.append(Problem(conv.source, conv.line, "choices", same))
        return None
    given = conv.extra.get("answer", reference)
    index = answer_index(given, choices)
    if index is None:
        problems.append(Problem(conv.source, conv.line, "answer", _not_an_answer(given, len(choices))))
        return None
    prompt[-1]["content"] = choice_prompt(prompt[-1]["content"], choices)
    return Sample(prompt, choices[index], conv.source, conv.line, choices, index)


def _not_an_answer(given: Any, n: int) -> str:
    if isinstance(given, int) and not isinstance(given, bool):
        return (f"{given} is not the 0-based index of a choice: {n} choices, so 0 to {n - 1} "
                f"(or a letter A-{LETTERS[n - 1]})")
    return f"{given!r} is not a letter A-{LETTERS[n - 1]}, a 0-based index or the text of one of the choices"


def _same_choices(choices: list[str]) -> str | None:
    """Two choices a model cannot tell apart (pick_choice compares texts without case, spaces or a final period): one
    is right and the other wrong, or the answer's text names both. None when all differ."""
    seen: dict[str, int] = {}
    for i, choice in enumerate(choices):
        key = choice.strip().rstrip(".").lower()
        if key in seen:
            return (f"{LETTERS[seen[key]]} and {LETTERS[i]} are the same text ({choices[seen[key]]!r}), so a model "
                    "choosing either may be scored wrong; make the choices distinct")
        seen[key] = i
    return None


def _index_out_of_range(specs: list[str], problems: list[Problem], encoding: str) -> list[Problem]:
    """The row reader turns a 0-based answer index into its choice's text (MMLU's shape); one past the choices
    reaches here as "answer: expected a string, got int". Those rows are read again to say the range instead."""
    suspects = {(p.source, p.line) for p in problems if p.field == "answer" and p.problem.endswith("got int")}
    if not suspects:
        return problems
    found: dict[tuple[str, int | str], str] = {}
    for spec in specs:
        for row in raw_rows(spec, [], encoding):
            data = row.data
            if (row.source, row.line) in suspects and isinstance(data, dict) and "answer" in data \
                    and isinstance(data.get("choices"), list) and data["choices"]:
                found[(row.source, row.line)] = _not_an_answer(data["answer"], len(data["choices"]))
    return [Problem(p.source, p.line, p.field, found[(p.source, p.line)])
            if p.field == "answer" and (p.source, p.line) in found else p for p in problems]


def choice_prompt(question: str, choices: list[str]) -> str:
    lines = [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    return f"{question.rstrip()}\n\n" + "\n".join(lines) + f"\n\n{CHOICE_INSTRUCTION}"


def answer_index(answer: Any, choices: list[str]) -> int | None:
    """The right choice from how the dataset wrote it: the choice's text, a letter, or a 0-based index."""
    if isinstance(answer, bool):
        return None
    if isinstance(answer, int):
        return answer if 0 <= answer < len(choices) else None
    if not isinstance(answer, str):
        return None
    text = answer.strip()
    for i, choice in enumerate(choices):
        if text == choice.strip():
            return i
    letter = text.strip("()").upper()
    if len(letter) == 1 and letter in LETTERS[: len(choices)]:
        return LETTERS.index(letter)
    return None


def pick_choice(text: str, choices: list[str]) -> int | None:
    """The choice a generated answer names, or None. In order: the answer is a choice's text; it starts with a letter
    ("B", "(B)", "B. ...", "B)"); it says "answer is B" / "Answer: B"; exactly one valid letter stands alone in it."""
    valid = LETTERS[: len(choices)]
    t = text.strip()
    bare = t.rstrip(".").strip().lower()
    for i, choice in enumerate(choices):
        if bare == choice.strip().rstrip(".").lower():
            return i
    patterns = (r"^\(?([A-Z])(?:[).:,]|$)", r"(?i:answer)(?:\s+is)?\s*[:\-]?\s*\(?([A-Z])\b")
    for pattern in patterns:
        m = re.search(pattern, t)
        if m and m.group(1) in valid:
            return valid.index(m.group(1))
    # "A" and "I" before a lowercase word are an article and a pronoun, not choices
    alone = {m for m in re.findall(r"\b(?![AI]\s+[a-z])([A-Z])\b", t) if m in valid}
    return valid.index(alone.pop()) if len(alone) == 1 else None


def _line_number(line: int | str) -> int:
    return line if isinstance(line, int) else int("".join(c for c in str(line) if c.isdigit()) or 0)


def answer_budget(dataset: str, limit: int | None, model: str) -> int:
    """max_tokens with room for the longest reference answer (+25%): no answer is cut short of what it is compared
    with (which would lower BLEU and ROUGE unfairly), and none rambles on for the default 256 tokens. `model` is a
    run's final folder or a model name: its tokenizer counts the tokens."""
    from pathlib import Path

    from tunesmith.models.load import load_tokenizer, resolve

    samples, _ = load_samples([dataset], limit)
    tokenizer = load_tokenizer(Path(model) if model.endswith("final") else resolve(model))
    longest = max(len(tokenizer(s.reference, add_special_tokens=False)["input_ids"]) for s in samples)
    return min(2048, -(-int(longest * 1.25 + 8) // 16) * 16)  # rounded up to a multiple of 16
