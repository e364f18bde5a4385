"""Config sections shared by several commands. Imports no torch: `--help` and typos stay fast."""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger("tunesmith")


class Section(BaseModel):
    """A strict section: unknown keys are errors, numeric strings such as "2e-4" are accepted (YAML 1.1 reads them
    as strings). Keys of earlier releases listed in `moved` still work, with a one-line note naming the new key."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    # old key -> "section.key" now; a dict picks the target by the config's `method` (rlhf's sections)
    moved: ClassVar[dict[str, str | dict[str, str]]] = {}
    # spellings users bring (OpenAI's top-level names for the generation section): moved the same way, without a note
    shortcuts: ClassVar[dict[str, str]] = {}

    @classmethod
    def moved_elsewhere(cls, key: str, method: str) -> str:
        """The error for an old key the given method does not read."""
        readers = cls.moved[key]
        return f"{key}: only used by --method {' or '.join(readers)} (method is {method})"

    @classmethod
    def moved_target(cls, key: str, method: str | None = None) -> str:
        """Where an old key lives now; with method None, any of its places (the loader reads the value's kind there)."""
        target = cls.shortcuts[key] if key in cls.shortcuts else cls.moved[key]
        if isinstance(target, str):
            return target
        if method is None:
            return next(iter(target.values()))
        if method not in target:
            raise ValueError(cls.moved_elsewhere(key, method))
        return target[method]

    @model_validator(mode="before")
    @classmethod
    def _move_old_keys(cls, data: object) -> object:
        if not (cls.moved or cls.shortcuts) or not isinstance(data, dict):
            return data
        data = dict(data)
        method = data.get("method", cls.model_fields["method"].default if "method" in cls.model_fields else None)
        for old in [k for k in data if (k in cls.moved or k in cls.shortcuts) and k not in cls.model_fields]:
            target = cls.moved_target(old, method)
            if old in cls.moved:
                log.info("note: %s is %s in tunesmith (the old key still works)", old, target)
            *sections, key = target.split(".")
            node = data
            for name in sections:
                inner = node.get(name) or {}
                node[name] = dict(inner) if isinstance(inner, dict) else inner.model_dump(exclude_unset=True)
                node = node[name]
            if key in node:
                raise ValueError(f"{old}: given twice, as {old} and as {target}; keep {target}")
            node[key] = data.pop(old)
        return data


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
    experts: bool = Field(False, description=(
        "Mixture-of-experts models: adapters on every expert's weights too (more adapter memory; off: attention, "
        "shared experts and dense layers only)."))
    train_router: bool = Field(False, description=(
        "Mixture-of-experts models: adapters on the routers too (default frozen: tuning them on little data "
        "unbalances the experts)."))


class GenerationCfg(Section):
    """Generation settings, with the OpenAI API's names."""

    max_tokens: int = Field(256, ge=1, description="Most new tokens per answer.")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy (deterministic); higher = more varied.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    stop: list[str] = Field(default_factory=list, description="Extra strings that end an answer.",
                            json_schema_extra={"commas": False})  # a stop string may hold a comma
    seed: int | None = Field(None, description="Sampling seed, for repeatable sampled answers.")


Device = Literal["auto", "cpu", "cuda", "mps"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]


# `--max-tokens 16 --temperature 0`: OpenAI's names, at the top level of every command that generates
GENERATION_SHORTCUTS = {name: f"generation.{name}" for name in GenerationCfg.model_fields}
