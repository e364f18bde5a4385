"""`tunesmith data check FILE`: validate every row and summarise the data.

Prints rows, formats detected, bad rows as `file:line: field: problem`, and, with --model, token length
statistics rendered by that model's chat template (exactly what training would see; for a vision-language model with
its images' tokens, as the processor expands them). Exits non-zero on bad rows."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from tunesmith.config import DataCheckConfig
from tunesmith.data.images import open_image
from tunesmith.data.limits import max_chars
from tunesmith.data.load import load_rows, normalise_row, raw_rows
from tunesmith.data.rows import Conversation, Preference, Problem, UnpairedPreference
from tunesmith.data.vision import images_of
from tunesmith.errors import DataError
from tunesmith.train.tokenize import dropped_calls, length_problem, unrendered_tools
from tunesmith.train.vision import length_problem as vision_length_problem
from tunesmith.train.vision import refuse_images_for_text_model

MAX_LISTED = 50  # bad rows listed in full; past that, a count (a broken export can have thousands)


@dataclass
class CheckReport:
    rows: int
    formats: dict[str, int]
    problems: list[Problem]
    token_lengths: list[int] = field(default_factory=list)
    trained_tokens: int = 0
    notes: list[str] = field(default_factory=list)  # what is not an error but changes what training sees


# What `data check` tries when --kind is not given, most specific first: each row counts for the first kind it reads
# as (a preference pair also reads as kto rows, a conversation as prompts, a text+label row as pt)
KINDS = ("preference", "kto", "sft", "embedding", "reranker", "classification", "pt", "prompts")
SAMPLE = 200  # rows of each dataset read to find their kind


def check(cfg: DataCheckConfig) -> CheckReport:
    detected = cfg.kind is None
    if detected:
        cfg.kind = detect_kind(cfg.dataset, cfg.encoding)
    template = _template(cfg.model) if cfg.model else None
    # With a tokenizer and max_length, a row too long to fit is refused before tokenizing, as training refuses it.
    # pt cuts a long text into max_length blocks (its default truncation, split) instead: a note, not a problem.
    limit = max_chars(template.tokenizer, cfg.max_length) if template and cfg.max_length and cfg.kind != "pt" else None
    data = load_rows(cfg.dataset, kind=cfg.kind, seed=0, encoding=cfg.encoding, max_chars=limit)
    if cfg.kind == "sft":
        data.refuse_undesirable_answers()  # as sft refuses them
    report = CheckReport(len(data.rows), data.formats, list(data.problems))
    if detected:
        report.notes.append(f"checked as {cfg.kind} data (what most rows read as; --kind to choose)")
    if template and data.rows:
        _token_stats(cfg, template, data.rows, report)
        report.notes += filter(None, [unrendered_tools(data.rows, template)])
        dropped, note = dropped_calls(data.rows, template)  # as sft refuses them
        report.problems += dropped
        report.notes += filter(None, [note])
        # rows read fine but refused once rendered (too long, nothing trained) are bad rows, not good ones
        report.rows -= len({(p.source, p.line) for p in report.problems[len(data.problems):]})
    _print(cfg, report)
    if report.problems:
        # the rows were listed just above, once; the error only counts them and says what to do
        raise DataError(f"{len(report.problems)} bad row(s), listed above: fix them, or pass --skip-bad-rows to a "
                        "training command to leave them out")
    return report


def detect_kind(specs: list[str], encoding: str = "utf-8") -> str:
    """The kind most of the first SAMPLE rows of each dataset read as, each row counted for the first of KINDS it reads
    as without a problem, through the readers training uses (sft when no row reads as any)."""
    problems: list[Problem] = []
    rows = [row for spec in specs for _, row in zip(range(SAMPLE), raw_rows(spec, problems, encoding))]
    counts = dict.fromkeys(KINDS, 0)
    for row in rows:
        kind = next((kind for kind in KINDS if _reads_as(row, kind)), None)
        if kind:
            counts[kind] += 1
    best = max(KINDS, key=lambda kind: counts[kind])  # max keeps the first of equals
    return best if counts[best] else "sft"


def _reads_as(row: Any, kind: str) -> bool:
    found: list[Problem] = []
    try:
        return normalise_row(row, kind, found) is not None and not found
    except DataError:
        return False


def _template(model: str) -> Any:
    from tunesmith.models.load import load_tokenizer, resolve
    from tunesmith.models.vision import is_vision_model, load_processor
    from tunesmith.templates import Template
    from tunesmith.templates.vision import VisionTemplate

    folder = resolve(model)
    if is_vision_model(folder):  # rows with images rendered as training renders them (train/vision.py)
        return VisionTemplate(load_processor(folder))
    return Template(load_tokenizer(folder))


def _token_stats(cfg: DataCheckConfig, template: Any, rows: list, report: CheckReport) -> None:
    from tunesmith.templates.vision import VisionTemplate

    if not isinstance(template, VisionTemplate):
        refuse_images_for_text_model(rows, cfg.model)
    blocks = 0  # texts longer than max_length
    for row in rows:
        if isinstance(template, VisionTemplate) and isinstance(row, Conversation):
            ids, labels = template.render_images(row.messages, [open_image(r) for r in images_of(row.messages)])
            report.trained_tokens += sum(1 for x in labels if x != -100)
            report.token_lengths.append(len(ids))
            if cfg.max_length and len(ids) > cfg.max_length:
                report.problems.append(vision_length_problem(row, ids, template.vision_token_ids, cfg.max_length))
            continue
        if isinstance(row, Conversation):
            samples = template.render_samples(row.messages, tools=row.extra.get("tools"))  # one per turn for some
            trained = sum(1 for _, labels in samples for x in labels if x != -100)
            if not trained:  # as sft refuses it (train/tokenize.py)
                report.problems.append(Problem(row.source, row.line, "messages",
                                               "no trained tokens (every turn has loss: false)"))
            report.trained_tokens += trained
            ids = max((s[0] for s in samples), key=len, default=[])  # the longest sample decides max_length
        elif isinstance(row, (Preference, UnpairedPreference)):  # the longer answer decides the length
            answers = (row.chosen, row.rejected) if isinstance(row, Preference) else (row.completion,)
            ids = max((template.render(row.prompt + [{"role": "assistant", "content": a}])[0] for a in answers),
                      key=len)
        else:
            ids = template.tokenizer(row.text, add_special_tokens=False)["input_ids"]
            report.token_lengths.append(len(ids))
            blocks += bool(cfg.max_length) and len(ids) > cfg.max_length
            continue
        report.token_lengths.append(len(ids))
        too_long = cfg.max_length and length_problem(row, field_of(row), len(ids), cfg.max_length)
        if too_long:
            report.problems.append(too_long)
    if blocks:
        report.notes.append(f"{blocks} text(s) longer than max_length {cfg.max_length} tokens: `tunesmith pt` cuts "
                            "them into max_length blocks (its default, --truncation split)")


def field_of(row: Any) -> str:
    if isinstance(row, Conversation):
        return "messages"
    return "chosen/rejected" if isinstance(row, Preference) else "completion" if isinstance(row, UnpairedPreference) else "text"


def _print(cfg: DataCheckConfig, report: CheckReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()  # the report is the command's output (`data check F > report.txt`); the verdict, stderr's
    table = Table(title=f"data check: {', '.join(cfg.dataset)}", show_header=False)
    table.add_row("good rows", str(report.rows))
    table.add_row("bad rows", f"[red]{len(report.problems)}[/red]" if report.problems else "0")
    table.add_row("formats", ", ".join(f"{k}: {v}" for k, v in sorted(report.formats.items())) or "-")
    lengths = sorted(report.token_lengths)
    if lengths:
        p95 = lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))]
        table.add_row(f"tokens ({cfg.model})", f"min {lengths[0]}, mean {statistics.mean(lengths):.0f}, median "
                      f"{statistics.median(lengths):.0f}, p95 {p95}, max {lengths[-1]}, total {sum(lengths)}")
        if report.trained_tokens:
            table.add_row("trained tokens", f"{report.trained_tokens} ({report.trained_tokens / sum(lengths):.0%} of all)")
    elif not cfg.model:
        table.add_row("tokens", "pass --model NAME for token lengths")
    console.print(table)
    for note in report.notes:
        console.print(f"note: {note}", style="yellow", markup=False, highlight=False, soft_wrap=True)
    # one line per bad row, never wrapped (file:line stays greppable) nor read as markup (a field like `[0]` or a
    # quoted value is the user's text)
    for p in report.problems[:MAX_LISTED]:
        console.print(str(p), style="red", markup=False, highlight=False, soft_wrap=True)
    if len(report.problems) > MAX_LISTED:
        console.print(f"... and {len(report.problems) - MAX_LISTED} more", style="red", highlight=False)
