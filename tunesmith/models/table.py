"""The families as a table: `tunesmith models` prints it, and README.md's "Model families" section is this text
(tests/models/test_families_table.py keeps the two equal)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from tunesmith.models.families import FAMILIES, NOT_REGISTERED, proven

COLUMNS = ("family", "architecture", "example", "template", "tool calls", "reasoning", "moe", "sft step")


def rows() -> list[dict[str, str]]:
    return [{"family": f.name, "architecture": f.model_type, "example": f.example, **proven(f)} for f in FAMILIES.values()]


def markdown() -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(f"`{r[c]}`" if c in ("architecture", "example") else r[c] for c in COLUMNS) + " |"
              for r in rows()]
    lines += ["", "Not registered yet:", ""]
    lines += [f"- {name}: {why}" for name, why in NOT_REGISTERED.items()]
    return "\n".join(lines) + "\n"


def show(cfg: Any) -> list[dict[str, str]]:
    """Print the table (or one family in full, or JSON); return the rows."""
    if cfg.family:
        if cfg.family not in FAMILIES:
            from tunesmith.errors import ModelNotFoundError

            raise ModelNotFoundError(f"family {cfg.family!r}: not registered; known: {', '.join(FAMILIES)}")
        info = {k: v for k, v in asdict(FAMILIES[cfg.family]).items() if v not in ((), {}, None, "")}
        print(json.dumps({**info, "proven": proven(FAMILIES[cfg.family])}, indent=2, ensure_ascii=False))
        return [r for r in rows() if r["family"] == cfg.family]
    if cfg.json:
        print(json.dumps({"families": rows(), "not_registered": NOT_REGISTERED}, indent=2, ensure_ascii=False))
        return rows()
    from rich.console import Console
    from rich.table import Table

    table = Table(title="tunesmith model families (proven by tests/models/test_families.py)")
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    for r in rows():
        table.add_row(*(r[c] for c in COLUMNS))
    console = Console()
    console.print(table)
    console.print("Not registered: " + "; ".join(f"{k} ({v})" for k, v in NOT_REGISTERED.items()))
    return rows()
