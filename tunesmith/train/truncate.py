"""--truncation error|drop|left|right: what a row longer than max_length becomes, and the counts config.yaml keeps.

    cuts = Cuts("right", cfg.max_length, template.stop_token_ids)
    kept = cuts.sample(row, ids, labels)          # (ids, labels) cut to fit, or None when the row is left out
    run.save_config(truncation=cuts.recorded())

error (the default) makes a too-long row a problem named file:line: field, as before. drop leaves it out. left keeps
the last max_length tokens: the answer and its end-of-turn token stay, the start of the prompt goes. right keeps the
first max_length tokens: an answer cut there loses its end-of-turn token, so the model sees answers that never end;
those rows are counted, named in one warning and recorded (`lost_ending`), never silently. A cut that leaves no
trained token leaves the row out (counted as dropped). Preference pairs cut the prompt's start (left) or each answer's
end (right), so prompt and answers stay apart as the trainers need them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from tunesmith.data.rows import Problem
from tunesmith.templates import IGNORE
from tunesmith.train.tokenize import length_problem

log = logging.getLogger("tunesmith")
MAX_NAMED = 20


@dataclass
class Cuts:
    mode: str
    max_length: int
    stop_ids: set[int] = field(default_factory=set)
    too_long: int = 0  # rows longer than max_length
    dropped: int = 0  # rows left out: drop, or nothing left to train after the cut
    cut: int = 0  # rows cut to max_length and kept
    lost_ending: int = 0  # rows whose answer lost its end-of-turn token in the cut (right)
    lost_where: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stop_ids = set(self.stop_ids)

    # -------------------------------------------------------------------------
    # One sequence (sft): ids with labels

    def sample(self, ids: list[int], labels: list[int]) -> tuple[tuple[list[int], list[int]] | None, bool]:
        """(the sample cut to fit, or None when nothing trainable is left; whether its end-of-turn token was lost).
        A sample within max_length comes back unchanged; mode error never reaches here (the caller reports it)."""
        size = self.max_length
        if len(ids) <= size:
            return (ids, labels), False
        if self.mode == "drop":
            return None, False
        if self.mode == "left":
            ids, labels = ids[-size:], labels[-size:]
            lost = False
        else:  # right
            lost = any(label != IGNORE and label in self.stop_ids for label in labels[size:])
            ids, labels = ids[:size], labels[:size]
        if all(label == IGNORE for label in labels):
            return None, lost
        return (ids, labels), lost

    def row(self, row: Any, samples: list[tuple[list[int], list[int]]], problems: list[Problem],
            field_name: str = "messages") -> list[tuple[list[int], list[int]]]:
        """A row's samples after the cut (empty when the row is left out or refused), counted."""
        longest = max((len(i) for i, _ in samples), default=0)
        if longest <= self.max_length:
            return samples
        self.too_long += 1
        if self.mode == "error":
            problems.append(length_problem(row, field_name, longest, self.max_length))
            return []
        kept, lost = [], False
        for ids, labels in samples:
            sample, sample_lost = self.sample(ids, labels) if self.mode != "drop" else (None, False)
            lost |= sample_lost
            if sample is not None:
                kept.append(sample)
        self._count(row, bool(kept), lost)
        return kept

    # -------------------------------------------------------------------------
    # A prompt and its answers (dpo, orpo, cpo, kto): each answer's ids follow the prompt's and are all trained

    def pair(self, row: Any, prompt: list[int], answers: list[list[int]], problems: list[Problem],
             field_name: str) -> tuple[list[int], list[list[int]]] | None:
        """(prompt, answers) cut so that prompt + the longest answer fits, or None when the row is left out."""
        longest = len(prompt) + max(len(a) for a in answers)
        if longest <= self.max_length:
            return prompt, answers
        self.too_long += 1
        if self.mode == "error":
            problems.append(length_problem(row, field_name, longest, self.max_length))
            return None
        over, room = longest - self.max_length, self.max_length - len(prompt)
        lost = False
        if self.mode == "drop":
            result = None
        elif self.mode == "left":  # the prompt's start goes; keep its generation prompt at least
            result = (prompt[over:], answers) if over < len(prompt) else None
        else:  # right: each answer's end goes
            lost = any(any(t in self.stop_ids for t in a[room:]) for a in answers) if room > 0 else False
            result = (prompt, [a[:room] for a in answers]) if room > 0 else None
        self._count(row, result is not None, lost)
        return result

    def whole(self, row: Any, sequences: list[list[int]], problems: list[Problem],
              field_name: str) -> list[list[int]] | None:
        """Whole sequences scored as one (a reward model's prompt + answer): cut alike, or None when left out."""
        longest = max(len(s) for s in sequences)
        if longest <= self.max_length:
            return sequences
        self.too_long += 1
        if self.mode == "error":
            problems.append(length_problem(row, field_name, longest, self.max_length))
            return None
        size = self.max_length
        lost = self.mode == "right" and any(any(t in self.stop_ids for t in s[size:]) for s in sequences)
        result = (None if self.mode == "drop" else [s[-size:] for s in sequences] if self.mode == "left"
                  else [s[:size] for s in sequences])
        self._count(row, result is not None, lost)
        return result

    # -------------------------------------------------------------------------
    # What the run says and records

    def _count(self, row: Any, kept: bool, lost: bool) -> None:
        if not kept:
            self.dropped += 1
            return
        self.cut += 1
        if lost:
            self.lost_ending += 1
            if len(self.lost_where) < MAX_NAMED:
                self.lost_where.append(f"{row.source}:{row.line}")

    def report(self) -> None:
        """One line per outcome, a warning when answers lost their ending."""
        if not self.too_long or self.mode == "error":
            return
        log.info("truncation %s: %d row(s) longer than max_length %d: %d cut, %d left out", self.mode, self.too_long,
                 self.max_length, self.cut, self.dropped)
        if self.lost_ending:
            more = f" and {self.lost_ending - len(self.lost_where)} more" if self.lost_ending > len(self.lost_where) else ""
            log.warning("truncation right: %d row(s) lost their answer's end-of-turn token in the cut (%s%s); the model "
                        "learns from answers that never end. --truncation left keeps endings, drop leaves such rows "
                        "out.", self.lost_ending, ", ".join(self.lost_where), more)

    def recorded(self) -> dict[str, Any]:
        """What config.yaml keeps (_resolved.truncation)."""
        return {"mode": self.mode, "max_length": self.max_length, "too_long": self.too_long, "cut": self.cut,
                "dropped": self.dropped, "lost_ending": self.lost_ending}

    def add(self, other: Cuts) -> Cuts:
        """Counts of train and held-out data together."""
        for name in ("too_long", "dropped", "cut", "lost_ending"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.lost_where += other.lost_where[: max(0, MAX_NAMED - len(self.lost_where))]
        return self
