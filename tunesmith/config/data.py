"""Configs of `tunesmith data inspect` and `tunesmith data clean` (`data check` is DataCheckConfig in commands.py)."""

from __future__ import annotations

from pathlib import PurePath
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from tunesmith.config.commands import DEFAULT_MODEL, TRUNCATION_HELP, Truncation
from tunesmith.config.sections import Section


class DataInspectConfig(Section):
    """Show rows as training sees them: each token's loss weight, where max_length cuts, the end-of-turn token.
Run: tunesmith data inspect FILE --model M [--rows 3]"""

    action: Literal["inspect"] = Field("inspect", description="What to do with the data (inspect).")
    dataset: list[str] = Field(..., min_length=1, description="Files, folders, registry names or hub ids.")
    model: str = Field(DEFAULT_MODEL, description="Render with this model's tokenizer and chat template.")
    adapters: str | None = Field(None, description="Render as a continued run would: the template saved in this "
                                 "run folder (runs/NAME/final), its base model and system prompt.")
    rows: int = Field(3, ge=1, description="How many rows to show (the first ones).")
    max_length: int = Field(2048, ge=8, description="The training max_length: where a long row would be cut.")
    truncation: Truncation = Field("error", description=TRUNCATION_HELP)
    loss_on: Literal["assistant", "last", "all"] = Field(
        "assistant", description="As sft's: assistant = every assistant turn; last = the final one; all = every token.")
    system: str | None = Field(None, description="System prompt added to conversations that have none.")
    chat_template_kwargs: dict = Field(default_factory=dict, description=(
        "Extra variables for the chat template, e.g. {enable_thinking: false} for Qwen3."))
    encoding: str = Field("utf-8", description="Text encoding of CSV/JSON/JSONL dataset files, e.g. gbk, utf-16.")
    output_dir: str | None = Field(None, description="Folder for inspect.html (default runs/inspect-<time>).")
    command: ClassVar[str] = "data"
    positional: ClassVar[tuple[str, ...]] = ("action", "dataset")


class DataCleanConfig(Section):
    """Remove exact and near duplicates, empty, garbage and malformed rows; mask personal data; report what and why.
Run: tunesmith data clean IN OUT [--threshold 0.8] [--no-redact-pii]"""

    action: Literal["clean"] = Field("clean", description="What to do with the data (clean).")
    dataset: str = Field(..., description="The dataset to clean: a file, folder, registry name or hub id.")
    output: str = Field(..., description="The JSONL file to write (rows keep their columns); OUT.report.json beside it.")
    kind: Literal["sft", "pt", "prompts", "preference", "kto"] = Field(
        "sft", description="What the rows are for; a row that is not valid as such is removed, with its problem.")
    dedupe: bool = Field(True, description="Remove exact duplicates and near duplicates (MinHash).")
    threshold: float = Field(0.8, gt=0.0, le=1.0, description=(
        "Near duplicates: estimated Jaccard similarity of character 5-grams at which a row counts as a copy."))
    redact_pii: bool = Field(True, description=(
        "Mask e-mails, phone numbers, card, ID (incl. Chinese resident ID) and IBAN numbers, IP and street addresses "
        "as <ENTITY_TYPE> (Presidio's recognizers plus Chinese formats; no name/place NER)."))
    encoding: str = Field("utf-8", description="Text encoding of CSV/JSON/JSONL dataset files, e.g. gbk, utf-16.")
    command: ClassVar[str] = "data"
    positional: ClassVar[tuple[str, ...]] = ("action", "dataset", "output")

    @field_validator("output")
    @classmethod
    def _jsonl(cls, value: str) -> str:
        # JSON Lines is what it writes: under a .csv or .parquet name no reader (ours included) could read it back
        suffix = PurePath(value).suffix.lower()
        if suffix in (".json", ".csv", ".parquet"):
            raise ValueError(f"writes JSON Lines; name the file {PurePath(value).with_suffix('.jsonl')} (not {suffix})")
        return value
