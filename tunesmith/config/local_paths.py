"""The local paths a config holds, written absolute in a run's config.yaml.

A run records its config so that `tunesmith sft -c runs/NAME/config.yaml` reruns it, and so that later commands
(`--adapters runs/NAME/final`, `--continue-from runs/NAME`) find its base model and data. Paths typed relative to
the directory the run started in found nothing from any other directory; the record holds them absolute. A field
says it holds a local path with `json_schema_extra=local_path(KIND)`; the value keeps its meaning: a hub id, a
registry name, a preset (`deepspeed: zero3`) or `resume: true` is no existing local path and is left as written, by
the rule the loaders follow (a name that exists on disk is read from disk, data/load.py and models/load.py).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

# path: a file or folder; dataset: a dataset spec, whose `#N` (sample N rows) follows the path;
# python: `file.py:Name`, a class or function in a Python file; named: `NAME=PATH` or PATH (eval's --compare)
Kind = Literal["path", "dataset", "python", "named"]
# The NAME of `NAME=SPEC`, as eval/targets.py targets_from reads it (anything else is a bare SPEC holding "=")
LABEL = re.compile(r"^[A-Za-z0-9_.\-]+=")


def local_path(kind: Kind = "path") -> dict[str, str]:
    """The marker a field carries (json_schema_extra) when its value may be a local path."""
    return {"local_path": kind}


def with_absolute_paths(cfg: BaseModel, data: dict[str, Any], cwd: Path) -> dict[str, Any]:
    """`data` (cfg.model_dump(mode="json")) with every marked relative path that exists under `cwd` made absolute,
    in place and returned; sections are walked."""
    for name, field in type(cfg).model_fields.items():
        if name not in data:
            continue
        value = getattr(cfg, name)
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if isinstance(value, BaseModel) and isinstance(data[name], dict):
            with_absolute_paths(value, data[name], cwd)
        elif kind := extra.get("local_path"):
            written = data[name]
            data[name] = ([absolute(v, kind, cwd) for v in written] if isinstance(written, list)
                          else absolute(written, kind, cwd))
    return data


def absolute(value: Any, kind: Kind, cwd: Path) -> Any:
    if not isinstance(value, str):  # resume: true
        return value
    head, path, rest = _split(value, kind)
    if not path or path.startswith("~") or Path(path).is_absolute():
        return value
    full = cwd / path
    if not full.exists():  # a hub id, a registry name, a preset, a URL: what the loaders read as a name
        return value
    return head + os.path.normpath(full) + rest


def _split(value: str, kind: Kind) -> tuple[str, str, str]:
    """What precedes the path (`base=` of a named spec), the path, and what follows it (`#200` of a dataset spec,
    `:Env` of a Python reference)."""
    if kind == "dataset":
        name, sep, count = value.rpartition("#")  # as data/load.py _split_count reads it
        if sep and count.isdigit() and name:
            return "", name, sep + count
    if kind == "python":
        file, sep, attr = value.rpartition(":")
        if sep and file.endswith(".py"):
            return "", file, sep + attr
    if kind == "named" and (label := LABEL.match(value)) and label.end() < len(value):
        return label.group(), value[label.end():], ""
    return "", value, ""
