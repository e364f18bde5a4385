"""Turn dataset specs (files, folders, registry names, hub ids, each with an optional #N) into checked rows.

    data = load_rows(["data/prd.jsonl", "self-cognition#20"], kind="sft", seed=42)
    data.rows       # Conversation or Text rows that passed every check
    data.problems   # every bad row, as `file:line: field: problem`
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data import formats, readers
from tunesmith.data.preference import normalise_kto, normalise_preference
from tunesmith.data.registry import REGISTRY
from tunesmith.data.rows import Conversation, Preference, Problem, RawRow, Text, UnpairedPreference
from tunesmith.errors import DataError

MAX_SHOWN = 20


@dataclass
class LoadedData:
    rows: list[Conversation | Text | Preference | UnpairedPreference] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    formats: dict[str, int] = field(default_factory=dict)

    def raise_if_bad(self, skip_bad_rows: bool) -> int:
        """Stop on bad rows, or count them when the user asked to skip. Returns the number skipped."""
        if not self.problems:
            return 0
        if skip_bad_rows:
            return len(self.problems)
        raise DataError(describe_problems(self.problems) + "\nFix these rows, or pass --skip-bad-rows to leave them out.")


def describe_problems(problems: list[Problem]) -> str:
    shown = "\n".join(f"  {p}" for p in problems[:MAX_SHOWN])
    more = f"\n  ... and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
    return f"{len(problems)} bad row(s):\n{shown}{more}"


def load_rows(specs: list[str], kind: str, seed: int = 42, substitutions: dict[str, str] | None = None) -> LoadedData:
    out = LoadedData()
    for spec in specs:
        name, count = _split_count(spec)
        raw = _read_spec(name, out.problems)
        if count is not None:
            raw = _sample(raw, count, seed)
        for row in raw:
            if substitutions:
                row = RawRow(row.source, row.line, _substitute(row.data, substitutions))
            if kind == "preference":
                item = normalise_preference(row, out.problems)
            elif kind == "kto":  # KTO rows, or preference pairs that KTO unpairs
                item = normalise_kto(row, out.problems)
            else:
                item = formats.normalise(row, kind, out.problems)
            if item is not None:
                out.rows.append(item)
                out.formats[item.format] = out.formats.get(item.format, 0) + 1
    out.problems.sort(key=_position)
    if not out.rows and not out.problems:
        raise DataError(f"{', '.join(specs)}: no rows found")
    return out


def _position(p: Problem) -> tuple[str, int]:
    line = p.line if isinstance(p.line, int) else int("".join(c for c in str(p.line) if c.isdigit()) or 0)
    return p.source, line


def _split_count(spec: str) -> tuple[str, int | None]:
    name, sep, count = spec.rpartition("#")
    if sep and count.isdigit() and name:
        return name, int(count)
    return spec, None


def _read_spec(name: str, problems: list[Problem]) -> list[RawRow]:
    path = Path(name).expanduser()
    if path.exists():
        return readers.read_path(path, problems)
    if name in REGISTRY:
        entry = REGISTRY[name]
        if entry.path is not None:
            return readers.read_path(entry.path, problems)
        return readers.read_hub(entry.hub_id, entry.split)
    if path.suffix.lower() in readers.SUFFIXES or name.startswith((".", "/", "~")):
        raise DataError(f"{name}: file not found")
    if "/" in name and name.count("/") == 1:
        repo, _, split = name.partition(":")
        return readers.read_hub(repo, split or "train")
    known = ", ".join(sorted(REGISTRY))
    raise DataError(f"{name}: not a file, folder, registry name or hub id (org/name). Registry names: {known}")


def _sample(rows: list[RawRow], count: int, seed: int) -> list[RawRow]:
    """N rows at random (repeat the whole set first when N exceeds it), in a seed-fixed order."""
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
