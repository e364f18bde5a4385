"""Config sections shared by several commands. Imports no torch: `--help` and typos stay fast."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    """A strict section: unknown keys are errors, numeric strings such as "2e-4" are accepted (YAML 1.1 reads them
    as strings)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraCfg(Section):
    rank: int = Field(16, ge=1, description="Adapter rank; adapter memory grows linearly with it.")
    alpha: int = Field(32, ge=1, description="Scale of the update; 2 x rank is the usual choice.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "Dropout on the adapter input. 0 (as peft, LLaMA-Factory and Unsloth): p > 0 keeps a dropped copy of each "
        "adapter's input for backward, ~40 % more activation memory on a 7B model, and costs speed."))
    targets: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get adapters: all-linear or a list of module names."
    )
    rslora: bool = Field(False, description="Rank-stabilised scaling alpha/sqrt(rank) (rsLoRA).")


class GenerationCfg(Section):
    """Generation settings, with the OpenAI API's names."""

    max_tokens: int = Field(256, ge=1, description="Most new tokens per answer.")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy (deterministic); higher = more varied.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    stop: list[str] = Field(default_factory=list, description="Extra strings that end an answer.")
    seed: int | None = Field(None, description="Sampling seed, for repeatable sampled answers.")


Device = Literal["auto", "cpu", "cuda", "mps"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
