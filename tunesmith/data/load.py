"""Turn dataset specs (files, folders, registry names, hub ids, each with an optional #N) into checked rows.

    data = load_rows(["data/prd.jsonl", "self-cognition#20"], kind="sft", seed=42)
    data.rows       # Conversation or Text rows that passed every check
    data.problems   # every bad row, as `file:line: field: problem`

Files are streamed row by row; with max_chars (data/limits.py) a row too long for any tokenization into max_length
tokens is a problem before a tokenizer ever sees it, so a 50 MB line costs a second, not minutes and gigabytes.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from tunesmith.data import formats, pairs, readers
from tunesmith.data.limits import texts, visible_chars
from tunesmith.data.preference import normalise_kto, normalise_preference
from tunesmith.data.registry import REGISTRY
from tunesmith.data.rows import Conversation, Preference, Problem, RawRow, Text, UnpairedPreference
from tunesmith.errors import DataError

log = logging.getLogger("tunesmith")
MAX_SHOWN = 20
SKIP_HINT = "Fix these rows, or pass --skip-bad-rows to leave them out."


@dataclass
class LoadedData:
    rows: list[Conversation | Text | Preference | UnpairedPreference] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    formats: dict[str, int] = field(default_factory=dict)

    def raise_if_bad(self, skip_bad_rows: bool, fix: str = SKIP_HINT) -> int:
        """Stop on bad rows, or count them when the user asked to skip. Returns the number skipped. `fix`: what the
        error tells to do; a command without --skip-bad-rows (export) names its own way out."""
        if not self.problems:
            return 0
        if skip_bad_rows:
            return len(self.problems)
        raise DataError(describe_problems(self.problems) + "\n" + fix)

    def refuse_undesirable_answers(self) -> None:
        """For sft: a KTO row labelled false holds an answer to avoid, which sft would learn as a good one; it becomes
        a problem. Other readers of chats (eval, export's calibration) take such rows as they are."""
        kept = []
        for row in self.rows:
            if isinstance(row, Conversation) and row.extra.get("label") is False:
                self.problems.append(Problem(row.source, row.line, "label", (
                    "false marks an undesirable answer (KTO data), which sft would learn as a good one; train on it "
                    "with `tunesmith rlhf --method kto`, or leave the row out")))
            else:
                kept.append(row)
        self.rows = kept
        self.problems.sort(key=_position)  # in file order, with those the rows' own checks found


def describe_problems(problems: list[Problem]) -> str:
    shown = "\n".join(f"  {p}" for p in problems[:MAX_SHOWN])
    more = f"\n  ... and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
    return f"{len(problems)} bad row(s):\n{shown}{more}"


def load_rows(specs: list[str], kind: str, seed: int = 42, substitutions: dict[str, str] | None = None,
              max_chars: int | None = None, encoding: str = "utf-8") -> LoadedData:
    """max_chars: a row with a text longer than this is a problem, found before tokenizing; pass
    `limits.max_chars(tokenizer, max_length)`. encoding: of the user's CSV/JSON/JSONL files (shipped data is utf-8)."""
    codec = readers.codec(encoding)
    out = LoadedData()
    for spec in specs:
        name, count = _split_count(spec)
        raw = _read_spec(name, out.problems, codec)
        if count is not None:
            raw = _sample(list(raw), count, seed, name)
        for row in raw:
            if substitutions:
                row = RawRow(row.source, row.line, _substitute(row.data, substitutions))
            item = normalise_row(row, kind, out.problems)
            if item is not None and max_chars is not None:
                item = _within(item, max_chars, out.problems)
            if item is not None:
                out.rows.append(item)
                out.formats[item.format] = out.formats.get(item.format, 0) + 1
    out.problems.sort(key=_position)
    if not out.rows and not out.problems:
        raise DataError(f"{', '.join(specs)}: no rows found")
    return out


def normalise_row(row: RawRow, kind: str, problems: list[Problem]):
    """One record as the row type `kind` needs, or None with its problems added."""
    if kind == "preference":
        return normalise_preference(row, problems)
    if kind == "kto":  # KTO rows, or preference pairs that KTO unpairs
        return normalise_kto(row, problems)
    if kind in pairs.KINDS:  # embedding, reranker and classification rows (data/pairs.py)
        return pairs.normalise(row, kind, problems)
    return formats.normalise(row, kind, problems)


def raw_rows(spec: str, problems: list[Problem], encoding: str = "utf-8") -> Iterable[RawRow]:
    """The records of one dataset spec as the file holds them; lines that cannot be read become problems."""
    name, count = _split_count(spec)
    raw = _read_spec(name, problems, readers.codec(encoding))
    return _sample(list(raw), count, 42, name) if count is not None else raw


def read_raw(specs: list[str], seed: int = 42, encoding: str = "utf-8") -> list[RawRow]:
    """The rows as the files hold them (an environment defines their shape), with file and line kept."""
    codec = readers.codec(encoding)
    problems: list[Problem] = []
    rows: list[RawRow] = []
    for spec in specs:
        name, count = _split_count(spec)
        raw = _read_spec(name, problems, codec)
        rows += _sample(list(raw), count, seed, name) if count is not None else list(raw)
    if problems:
        raise DataError(describe_problems(problems))
    if not rows:
        raise DataError(f"{', '.join(specs)}: no rows found")
    return rows


def _within(item, max_chars: int, problems: list[Problem]):
    """The item, or None with a problem when one of its texts cannot fit (limits.py says why the bound is safe)."""
    for where, text in texts(item):
        if len(text) > max_chars and (chars := visible_chars(text)) > max_chars:
            problems.append(Problem(item.source, item.line, where, f"{chars:,} characters besides whitespace, more "
                                    f"than max_length tokens can hold (at most {max_chars:,} with this tokenizer); "
                                    "shorten the row or raise max_length"))
            return None
    return item


def _position(p: Problem) -> tuple[str, int]:
    line = p.line if isinstance(p.line, int) else int("".join(c for c in str(p.line) if c.isdigit()) or 0)
    return p.source, line


def _split_count(spec: str) -> tuple[str, int | None]:
    name, sep, count = spec.rpartition("#")
    if sep and count.isdigit() and name:
        return name, int(count)
    return spec, None


def _read_spec(name: str, problems: list[Problem], codec: str) -> Iterable[RawRow]:
    path = Path(name).expanduser()
    try:
        exists = path.exists()
    except OSError as err:  # e.g. a name too long for the file system
        raise DataError(f"{name[:200]}: not a usable path ({err.strerror or err})") from None
    if exists:
        return readers.read_path(path, problems, codec)
    if name in REGISTRY:
        entry = REGISTRY[name]
        if entry.path is not None:
            return readers.read_path(entry.path, problems)
        return readers.read_hub(entry.hub_id, entry.split)
    local, _, split = name.rpartition(":")
    if local and Path(local).expanduser().exists():  # a peer's weight or split syntax on a local file
        raise DataError(f"{name}: {local} is a local file or folder, and `:{split}` would name a split of a hub "
                        f"dataset (org/name:split); pass {local} alone (NAME#N draws N rows of it)")
    if path.suffix.lower() in readers.SUFFIXES or name.startswith((".", "/", "~")):
        raise DataError(f"{name}: file not found")
    if "/" in name and name.count("/") == 1:
        repo, _, split = name.partition(":")
        return readers.read_hub(repo, split or "train")
    known = ", ".join(sorted(REGISTRY))
    raise DataError(f"{name}: not a file, folder, registry name or hub id (org/name). Registry names: {known}")


def _sample(rows: list[RawRow], count: int, seed: int, name: str) -> list[RawRow]:
    """N rows at random (repeat the whole set first when N exceeds it, as README's `name#N` promises N rows), in a
    seed-fixed order. Repeating is said once: a #N meant as "at most N" otherwise trains on copies unawares."""
    if count > len(rows) > 0:
        what = "file" if Path(name).expanduser().is_file() else "dataset"
        log.info("%s#%d: the %s has %d rows; %d drawn (rows repeated)", name, count, what, len(rows), count)
    rng = random.Random(seed)
    whole, rest = divmod(count, len(rows)) if rows else (0, 0)
    return rows * whole + rng.sample(rows, rest)


def _substitute(data, subs: dict[str, str]):
    if isinstance(data, str):
        for key, value in subs.items():
            data = data.replace("{{" + key + "}}", value)
        return data
    if isinstance(data, list):
        return [_substitute(x, subs) for x in data]
    if isinstance(data, dict):
        return {k: _substitute(v, subs) for k, v in data.items()}
    return data
