"""`tunesmith data inspect FILE --model M [--rows 3]`: rows exactly as sft trains on them.

Each token with its loss weight (1 = trained, 0 = context only), the end-of-turn tokens the model learns to stop on,
and where max_length would cut under --truncation; in the terminal (rich colours) and as inspect.html in the output
folder. The samples come from train/tokenize.py's render_row, the function sft tokenizes with, so what is shown is
what trains. Like every training run, inspect refuses a dataset in which no answer trains an end-of-turn token
(train/labels.py), after showing the rows, so the user sees why.
"""

from __future__ import annotations

import datetime
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config.data import DataInspectConfig
from tunesmith.data.load import load_rows
from tunesmith.errors import DataError
from tunesmith.templates import IGNORE
from tunesmith.train.labels import require_end_of_turn
from tunesmith.train.preflight import load_template
from tunesmith.train.tokenize import render_row, tokenize_sft
from tunesmith.train.truncate import Cuts
from tunesmith.train.vision import vision_template

STYLES = {"trained": "black on green", "context": "grey50", "eot": "bold white on magenta", "cut": "strike red"}
LEGEND = [("trained", "trained (weight 1)"), ("context", "context (weight 0)"), ("eot", "end of turn, trained"),
          ("cut", "cut by max_length")]


@dataclass
class Piece:
    """One or more tokens shown as one piece of text (a character split over byte tokens stays whole)."""

    ids: list[int]
    text: str
    weight: int  # 1 trained, 0 not
    eot: bool  # a trained stop token: where the model learns to end its answer
    cut: bool  # beyond max_length under this truncation mode

    @property
    def kind(self) -> str:
        return "cut" if self.cut else "eot" if self.eot else "trained" if self.weight else "context"


@dataclass
class SampleView:
    where: str  # file:line
    index: int  # sample of its row (templates that rewrite past turns give one per turn)
    of: int
    ids: list[int]
    labels: list[int]
    pieces: list[Piece]
    outcome: str  # fits | cut left | cut right | dropped | refused


@dataclass
class InspectReport:
    samples: list[SampleView] = field(default_factory=list)
    html: Path | None = None
    rows: int = 0  # rows in the dataset
    ending_samples: int = 0  # samples of the whole dataset that train an end-of-turn token


def inspect(cfg: DataInspectConfig) -> InspectReport:
    template, base_folder = load_template(cfg)
    template = vision_template(cfg, template, base_folder) or template  # a VLM: rows with their images' tokens
    data = load_rows(cfg.dataset, kind="sft", seed=0, encoding=cfg.encoding)
    if not data.rows:
        raise DataError(f"{', '.join(cfg.dataset)}: no usable rows ({len(data.problems)} bad); see tunesmith data check")
    stop_ids = set(template.stop_token_ids)
    report = InspectReport(rows=len(data.rows))
    for row in data.rows[: cfg.rows]:
        samples = render_row(row, template, cfg.loss_on)
        for k, (ids, labels) in enumerate(samples):
            report.samples.append(_view(f"{row.source}:{row.line}", k, len(samples), ids, labels, template, stop_ids,
                                        cfg))
    out = Path(cfg.output_dir or f"runs/inspect-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    report.html = out / "inspect.html"
    report.html.write_text(_html(cfg, report, template), encoding="utf-8")
    _print(cfg, report, template, len(data.problems))
    # The whole dataset as sft would train it (cached tokenization): refuse where no answer learns to stop.
    cuts = Cuts(cfg.truncation if cfg.truncation != "error" else "drop", cfg.max_length, stop_ids)
    train, _ = tokenize_sft(data.rows, template, cfg.loss_on, cfg.max_length, cuts=cuts)
    report.ending_samples = require_end_of_turn(train["labels"], template, cfg.dataset)
    return report


def _view(where: str, index: int, of: int, ids: list[int], labels: list[int], template: Any, stop_ids: set[int],
          cfg: DataInspectConfig) -> SampleView:
    size, n = cfg.max_length, len(ids)
    cut_from, cut_to = n, n  # token positions the cut removes: [cut_from, cut_to) on the right, [0, cut_to) on the left
    outcome = "fits"
    if n > size:
        if cfg.truncation == "left":
            cut_from, cut_to, outcome = 0, n - size, "cut left"
        elif cfg.truncation == "right":
            cut_from, outcome = size, "cut right"
        else:
            cut_from, cut_to = size, n
            outcome = "dropped" if cfg.truncation == "drop" else "refused (raise max_length or pick --truncation)"
    pieces: list[Piece] = []
    for start, end in _units(template.tokenizer, ids):
        weight = int(any(labels[i] != IGNORE for i in range(start, end)))
        eot = any(labels[i] != IGNORE and ids[i] in stop_ids for i in range(start, end))
        cut = cut_from <= start < cut_to
        pieces.append(Piece(ids[start:end], template.tokenizer.decode(ids[start:end]), weight, eot, cut))
    return SampleView(where, index, of, ids, labels, pieces, outcome)


def _units(tokenizer: Any, ids: list[int]) -> list[tuple[int, int]]:
    """Token ranges to show as one piece: a token alone, unless it holds part of a character (byte-level BPE splits
    one character over several tokens; alone each decodes to U+FFFD)."""
    units, i = [], 0
    while i < len(ids):
        j = i + 1
        while "\ufffd" in tokenizer.decode(ids[i:j]) and j < len(ids) and j - i < 8:
            j += 1
        if "\ufffd" in tokenizer.decode(ids[i:j]):
            j = i + 1  # a real replacement character, or bytes that never complete: show the token alone
        units.append((i, j))
        i = j
    return units


# -----------------------------------------------------------------------------
# Terminal


def _print(cfg: DataInspectConfig, report: InspectReport, template: Any, bad_rows: int) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False)
    legend = Text("legend: ")
    for kind, label in LEGEND:
        legend.append(f" {label} ", style=STYLES[kind]).append("  ")
    console.print(legend)
    stops = ", ".join(repr(template.tokenizer.convert_ids_to_tokens(i)) for i in template.stop_token_ids)
    console.print(f"model {cfg.model}, loss_on {cfg.loss_on}, max_length {cfg.max_length}, truncation "
                  f"{cfg.truncation}; end of turn {template.end_of_turn!r}, stop tokens {stops}")
    for view in report.samples:
        trained = sum(1 for label in view.labels if label != IGNORE)
        sample = f", sample {view.index + 1} of {view.of}" if view.of > 1 else ""
        console.rule()
        console.print(f"{view.where}{sample}: {len(view.ids)} tokens, {trained} trained, {view.outcome}",
                      style="bold", soft_wrap=True)
        text = Text()
        for n, piece in enumerate(view.pieces):
            if n and piece.cut != view.pieces[n - 1].cut:
                text.append(f" ✂ max_length {cfg.max_length} ✂ ", style="bold red")
            text.append(piece.text.replace("\n", "⏎\n"), style=STYLES[piece.kind])
        console.print(text)
    console.rule()
    extra = f" ({bad_rows} bad rows left out: tunesmith data check names them)" if bad_rows else ""
    console.print(f"{len(report.samples)} sample(s) of {report.rows} row(s) shown{extra}; {report.html}")


# -----------------------------------------------------------------------------
# HTML


CSS = """body{font-family:system-ui,sans-serif;margin:2em}pre{white-space:pre-wrap;font-size:14px;line-height:1.6}
span.trained{background:#b7f0b1}span.context{color:#888}span.eot{background:#c026d3;color:#fff;font-weight:bold}
span.cut{color:#c00;text-decoration:line-through}span.scissors{color:#c00;font-weight:bold}
span[data-w]{border-right:1px dotted #ccc}h2{font-size:15px;margin-top:2em}"""


def _html(cfg: DataInspectConfig, report: InspectReport, template: Any) -> str:
    parts = [f"<!doctype html><meta charset='utf-8'><title>tunesmith data inspect</title><style>{CSS}</style>",
             f"<h1>{html.escape(', '.join(cfg.dataset))}</h1>",
             (f"<p>model {html.escape(cfg.model)}, loss_on {cfg.loss_on}, max_length {cfg.max_length}, truncation "
              f"{cfg.truncation}; end of turn <code>{html.escape(repr(template.end_of_turn))}</code></p><p>"),
             *[f"<span class='{kind}'>{html.escape(label)}</span> " for kind, label in LEGEND], "</p>"]
    for view in report.samples:
        trained = sum(1 for label in view.labels if label != IGNORE)
        parts.append(f"<h2>{html.escape(view.where)} sample {view.index + 1}/{view.of}: {len(view.ids)} tokens, "
                     f"{trained} trained, {html.escape(view.outcome)}</h2><pre>")
        for n, piece in enumerate(view.pieces):
            if n and piece.cut != view.pieces[n - 1].cut:
                parts.append(f"<span class='scissors'>✂ max_length {cfg.max_length} ✂</span>")
            ids = " ".join(map(str, piece.ids))
            parts.append(f"<span class='{piece.kind}' data-w='{piece.weight}' data-ids='{ids}' title='ids {ids}, "
                         f"loss weight {piece.weight}'>{html.escape(piece.text)}</span>")
        parts.append("</pre>")
    return "".join(parts) + "\n"
