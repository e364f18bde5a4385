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

    console = Console()
    table, left_out = fitting_table(console)
    console.print(table)
    if left_out:
        console.print(f"Left out to fit {console.width} columns: {', '.join(left_out)} (sft step is proven for every "
                      "family); a wider terminal, --family NAME or --json shows them.")
    console.print("Not registered: " + "; ".join(f"{k} ({v})" for k, v in NOT_REGISTERED.items()))
    return rows()


# -----------------------------------------------------------------------------
# Fitting the terminal

# Left out in this order while the table cannot show every word whole at the terminal's width (rich would otherwise
# fold every column mid-word, hub ids included): 'sft step' says 'yes' for every family, the architecture and the
# example hub id are in --family NAME and --json. The family name is never left out nor broken.
LEFT_OUT_FIRST = ("sft step", "architecture", "example")
WHOLE = ("family", "example", "architecture")  # names: shown whole or not at all


def fitting_table(console: Any) -> tuple[Any, list[str]]:
    """The table with the most columns whose every word fits whole in the console's width, and the columns left out."""
    columns = list(COLUMNS)
    left_out: list[str] = []
    for name in LEFT_OUT_FIRST:
        if narrowest(columns) <= console.width:
            break
        columns.remove(name)
        left_out.append(name)
    return _table(columns), left_out


def narrowest(columns: list[str]) -> int:
    """Width of the table with no word broken: each column as wide as its longest word (a name: its whole text),
    plus one space each side and a border per column, and the last border."""
    def longest(column: str) -> int:
        texts = [column, *(r[column] for r in rows())]
        return max(len(word) for text in texts for word in ([text] if column in WHOLE else text.split()))

    return sum(longest(c) + 3 for c in columns) + 1


def _table(columns: list[str]) -> Any:
    from rich.table import Table

    table = Table(title="tunesmith model families (proven by tests/models/test_families.py)")
    for column in columns:
        # the cells wrap between words; a word longer than its column (a narrow terminal) is folded, never cut
        table.add_column(column, no_wrap=column in WHOLE, overflow="fold")
    for r in rows():
        table.add_row(*(r[c] for c in columns))
    return table
