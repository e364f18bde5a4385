"""`tunesmith data clean IN OUT`: a cleaned copy of a dataset and a report of every row removed or masked, and why.

Rows keep their own columns; personal data in any text value is masked in place (data/clean.py says how). A row goes
when it is not valid for --kind (its problem as the reason), empty, garbage, or a duplicate of an earlier row. The
report (OUT.report.json) names rows by file:line and never repeats the personal data it masked.

The training flags --dedupe and --redact-pii run the same Cleaner over the loaded rows (clean_rows below).
"""

from __future__ import annotations

import json
import logging
from copy import deepcopy
from pathlib import Path
from typing import Any

from tunesmith.config.data import DataCleanConfig
from tunesmith.data.clean import Cleaner
from tunesmith.data.limits import texts
from tunesmith.data.load import normalise_row, raw_rows
from tunesmith.data.rows import (
    Conversation,
    Preference,
    Problem,
    Text,
    UnpairedPreference,
)
from tunesmith.errors import DataError

log = logging.getLogger("tunesmith")
KEEP_KEYS = {"role", "from", "type", "label", "id", "tool_call_id", "name"}  # values that are no free text


def clean(cfg: DataCleanConfig) -> dict[str, Any]:
    cleaner = Cleaner(dedupe=cfg.dedupe, threshold=cfg.threshold, redact_pii=cfg.redact_pii)
    problems: list[Problem] = []
    out_rows, entries, total = [], [], 0
    for raw in raw_rows(cfg.dataset, problems, cfg.encoding):
        total += 1
        where = f"{raw.source}:{raw.line}"
        found: list[Problem] = []
        item = normalise_row(raw, cfg.kind, found)
        reason = "; ".join(f"{p.field}: {p.problem}" for p in found) if item is None else None
        if reason:
            cleaner.counts["malformed"] = cleaner.counts.get("malformed", 0) + 1
        else:
            reason = cleaner.removal(row_text(item), where)
        if reason:
            entries.append({"row": where, "action": "removed", "reason": reason})
            continue
        data, masked = redact_value(deepcopy(raw.data), cleaner)
        if masked:
            entries.append({"row": where, "action": "masked", "entities": masked})
        out_rows.append(data)
    for p in problems:  # lines that could not be read at all
        entries.append({"row": f"{p.source}:{p.line}", "action": "removed", "reason": f"{p.field}: {p.problem}"})
        cleaner.counts["unreadable"] = cleaner.counts.get("unreadable", 0) + 1
    if not total and not problems:
        raise DataError(f"{cfg.dataset}: no rows found")
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out_rows), encoding="utf-8")
    report = {"input": cfg.dataset, "output": str(out), "rows_in": total + len(problems), "rows_out": len(out_rows),
              "removed": {k: v for k, v in cleaner.counts.items() if not k.startswith("pii:")},
              "masked": {k[4:]: v for k, v in cleaner.counts.items() if k.startswith("pii:")},
              "settings": {"kind": cfg.kind, "dedupe": cfg.dedupe, "threshold": cfg.threshold,
                           "redact_pii": cfg.redact_pii}, "rows": entries}
    report_path = out.with_name(out.name + ".report.json")
    report_path.write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    _print(report, report_path)
    return report


def row_text(item: Conversation | Text | Preference | UnpairedPreference) -> str:
    """Every text of a row, as one string (what duplicates are judged on)."""
    return "\n".join(text for _, text in texts(item))


def redact_value(value: Any, cleaner: Cleaner, key: str | None = None) -> tuple[Any, dict[str, int]]:
    """Any JSON value with personal data masked in its free-text strings, and the counts per entity."""
    found: dict[str, int] = {}
    if isinstance(value, str) and key not in KEEP_KEYS:
        value, found = cleaner.redact(value)
    elif isinstance(value, dict):
        for k in value:
            value[k], inner = redact_value(value[k], cleaner, k)
            _merge(found, inner)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            value[i], inner = redact_value(v, cleaner, key)
            _merge(found, inner)
    return value, found


def _merge(into: dict[str, int], more: dict[str, int]) -> None:
    for name, n in more.items():
        into[name] = into.get(name, 0) + n


def _print(report: dict[str, Any], path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"data clean: {report['input']} -> {report['output']}", show_header=False)
    table.add_row("rows in / out", f"{report['rows_in']} / {report['rows_out']}")
    for name, n in report["removed"].items():
        table.add_row(f"removed: {name.replace('_', ' ')}", str(n))
    for name, n in report["masked"].items():
        table.add_row(f"masked: {name}", str(n))
    table.add_row("report", str(path))
    Console(stderr=True).print(table)


# -----------------------------------------------------------------------------
# --dedupe and --redact-pii in training


def clean_rows(cfg: Any, rows: list) -> tuple[list, dict[str, Any]]:
    """The loaded rows with duplicates, empty and garbage rows removed (--dedupe) and personal data masked
    (--redact-pii), and what config.yaml records about it."""
    if not (getattr(cfg, "dedupe", False) or getattr(cfg, "redact_pii", False)):
        return rows, {}
    cleaner = Cleaner(dedupe=cfg.dedupe, redact_pii=cfg.redact_pii)
    kept = []
    for row in rows:
        if cfg.dedupe and cleaner.removal(row_text(row), f"{row.source}:{row.line}"):
            continue
        kept.append(_redacted(row, cleaner) if cfg.redact_pii else row)
    removed = {k: v for k, v in cleaner.counts.items() if not k.startswith("pii:")}
    masked = {k[4:]: v for k, v in cleaner.counts.items() if k.startswith("pii:")}
    log.info("cleaning: %d of %d rows removed %s, personal data masked %s", len(rows) - len(kept), len(rows),
             removed or "", masked or "")
    return kept, {"cleaning": {"rows_in": len(rows), "rows_out": len(kept), "removed": removed, "masked": masked}}


def _redacted(row: Any, cleaner: Cleaner) -> Any:
    row = deepcopy(row)
    if isinstance(row, Text):
        row.text = cleaner.redact(row.text)[0]
        return row
    messages = row.messages if isinstance(row, Conversation) else row.prompt
    for m in messages:
        if isinstance(m.get("content"), str):
            m["content"] = cleaner.redact(m["content"])[0]
    if isinstance(row, Preference):
        row.chosen, row.rejected = cleaner.redact(row.chosen)[0], cleaner.redact(row.rejected)[0]
    elif isinstance(row, UnpairedPreference):
        row.completion = cleaner.redact(row.completion)[0]
    return row
