"""What an evaluation leaves behind: a table on the console, and in its folder

    results.json   scores per model and metric, how each was computed, the settings
    answers.jsonl  one line per model and row: the prompt, the reference, the answer and its scores
    scores.png     one bar per model for each metric
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("tunesmith")


def print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    columns = results["columns"]
    models = results["models"]
    table = Table(title=f"tunesmith eval: {', '.join(results['dataset'])} ({results['rows']} rows)")
    table.add_column("model", no_wrap=True)
    for col in columns:
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("time (s)", justify="right", style="dim")  # load + answer every row
    best = {c: max(m["scores"].get(c, float("-inf")) for m in models.values()) for c in columns}
    for name, m in models.items():
        cells = []
        for c in columns:
            value = m["scores"].get(c)
            text = "-" if value is None else f"{value:.3f}"
            cells.append(f"[bold]{text}[/bold]" if value is not None and len(models) > 1 and value == best[c] else text)
        table.add_row(name, *cells, f"{m['seconds']:.0f}")
    Console().print(table)


def append_answers(path: Path, rows: list[dict[str, Any]]) -> None:
    """Each model's answers as soon as they are scored: a later model failing does not lose them."""
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_results(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def plot_scores(path: Path, results: dict[str, Any]) -> Path | None:
    try:
        import matplotlib
    except ImportError:  # a pinned dependency; only a hand-made environment lacks it
        log.warning("matplotlib is not installed: no %s (pip install matplotlib)", path.name)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns, models = results["columns"], results["models"]
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(columns) * max(1, len(models)) ** 0.5 + 2), 4))
    for i, (name, m) in enumerate(models.items()):
        xs = [c + (i - (len(models) - 1) / 2) * width for c in range(len(columns))]
        values = [m["scores"].get(col, 0.0) for col in columns]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=2)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score (0-1)")
    ax.set_title(f"{', '.join(results['dataset'])} ({results['rows']} rows)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
