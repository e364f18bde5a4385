"""Read JSONL/JSON/CSV/Parquet files, folders and hub datasets into RawRows that remember their file and line.

A line that is not valid JSON does not stop reading: it becomes a Problem, so one run reports every bad row.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator

from tunesmith.data.rows import Problem, RawRow
from tunesmith.errors import DataError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def read_path(path: Path, problems: list[Problem]) -> list[RawRow]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and not p.name.startswith("."))
        if not files:
            raise DataError(f"{path}: folder has no {'/'.join(SUFFIXES)} files")
        return [row for f in files for row in read_path(f, problems)]
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return list(_read_jsonl(path, problems))
    if suffix == ".json":
        return _read_json(path, problems)
    if suffix == ".csv":
        return _read_csv(path)
    if suffix == ".parquet":
        return _read_parquet(path)
    raise DataError(f"{path}: unsupported file type {suffix or '(none)'}; use {', '.join(SUFFIXES)}")


def _read_jsonl(path: Path, problems: list[Problem]) -> Iterator[RawRow]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield RawRow(str(path), number, json.loads(line))
            except json.JSONDecodeError as err:
                problems.append(Problem(str(path), number, "json", f"not valid JSON ({err.msg} at column {err.colno})"))


def _read_json(path: Path, problems: list[Problem]) -> list[RawRow]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        problems.append(Problem(str(path), err.lineno, "json", f"not valid JSON ({err.msg} at column {err.colno})"))
        return []
    if isinstance(data, dict):  # {"data": [...]} or {"train": [...]}: take the single list inside
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a JSON list of rows (or an object holding one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of rows")
    return [RawRow(str(path), f"row {i}", item) for i, item in enumerate(data)]


def _read_csv(path: Path) -> list[RawRow]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        # Line numbers count the header, so they match what an editor shows.
        return [RawRow(str(path), reader.line_num, dict(row)) for row in reader]


def _read_parquet(path: Path) -> list[RawRow]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return [RawRow(str(path), f"row {i}", row) for i, row in enumerate(table.to_pylist())]


def read_hub(dataset_id: str, split: str = "train") -> list[RawRow]:
    """A Hugging Face dataset id (`org/name` or `org/name:split`). Offline, fail at once with what to do."""
    from tunesmith.hub import require_hub_or_cache

    require_hub_or_cache(dataset_id, kind="dataset")
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as err:  # datasets raises many types; the user needs the id and the reason
        raise DataError(f"{dataset_id}: could not load hub dataset: {err}") from None
    return [RawRow(dataset_id, f"row {i}", row) for i, row in enumerate(ds)]
