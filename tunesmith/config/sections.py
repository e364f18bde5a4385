"""Config sections shared by several commands. Imports no torch: `--help` and typos stay fast."""

from __future__ import annotations

import difflib
import logging
import re
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
        """Old keys, shortcuts and the peers' spellings (SFTConfig(lora_r=8, cutoff_len=1024), as `-c` files and
        flags take them: config/load.py) to their places; then an unknown key names the nearest valid one."""
        if not isinstance(data, dict):
            return data
        from tunesmith.config.load import ALIASES, peer_hint, resolves  # load.py imports no section: no cycle

        data = dict(data)
        peers = {k: to for k, to in ALIASES.items() if k not in cls.model_fields and resolves(cls, to)}
        method = data.get("method", cls.model_fields["method"].default if "method" in cls.model_fields else None)
        for old in [k for k in data if (k in cls.moved or k in cls.shortcuts or k in peers) and k not in cls.model_fields]:
            target = peers[old] if old in peers else cls.moved_target(old, method)
            if old in peers:
                log.info("note: %s is called %s in tunesmith", old, target)
            elif old in cls.moved:
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
        if not hasattr(cls, "retired"):  # PlanConfig reads sft's keys past its own fields in validators of its own
            for key in data:
                if str(key) not in cls.model_fields:
                    hint = peer_hint(cls, str(key), data[key])
                    if hint:  # bf16, stage...: a peer's key that is no rename of ours
                        raise ValueError(f"{key}: unknown option; {hint}")
                    near = difflib.get_close_matches(str(key), [*cls.model_fields, *cls.moved, *cls.shortcuts, *peers],
                                                     n=1, cutoff=0.5)
                    raise ValueError(f"{key}: unknown option" + (f"; did you mean {near[0]}?" if near else ""))
        return data

    @model_validator(mode="before")
    @classmethod
    def _one_item_lists(cls, data: object) -> object:
        """A list key given one string (`dataset: data.jsonl`, `report_to: none`, SFTConfig(dataset="data.jsonl"), as
        LLaMA-Factory and HF Trainer configs write them) is that one item, or its comma-separated items where the
        flag splits commas too (`dataset: a.jsonl,b.jsonl`)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, value in data.items():
            field = cls.model_fields.get(name)
            if isinstance(value, str) and field is not None and _takes_list_not_text(field.annotation, value):
                extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
                items = [value] if extra.get("commas") is False else [v.strip() for v in value.split(",")]
                data[name] = [item for item in items if item]
        return data


def changed(model: BaseModel, name: str) -> bool:
    """`name` was given, and not as its default. A run's config.yaml writes every key with its value, so reading one
    back (tunesmith sft -c runs/NAME/config.yaml) must not look like asking for a section the command ignores."""
    if name not in model.model_fields_set:
        return False
    return getattr(model, name) != type(model).model_fields[name].get_default(call_default_factory=True)


def _takes_list_not_text(annotation: object, value: str) -> bool:
    """A field typed as a list whose other types (str, a Literal) do not take `value` as it is."""
    import types
    import typing

    union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
    options = typing.get_args(annotation) if union else (annotation,)
    if not any(typing.get_origin(o) is list for o in options):
        return False
    return not any(o is str or (typing.get_origin(o) is Literal and value in typing.get_args(o)) for o in options)


class LoraCfg(Section):
    rank: int = Field(16, ge=1, description="Adapter rank; adapter memory grows linearly with it.")
    alpha: int = Field(32, ge=1, description="Scale of the update; unset: 2 x rank (the usual choice, as LLaMA-Factory).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "Dropout on the adapter input. 0 (as peft, LLaMA-Factory and Unsloth): p > 0 keeps a dropped copy of each "
        "adapter's input for backward, ~40 % more activation memory on a 7B model, and costs speed."))
    targets: list[str] | Literal["all-linear"] = Field(
        "all-linear", description=(
            "Modules that get adapters: all-linear (or all, LLaMA-Factory's spelling): every linear layer but the "
            "output head, as peft's all-linear; or a list of module names (q_proj, v_proj...)."))
    rslora: bool = Field(False, description="Rank-stabilised scaling alpha/sqrt(rank) (rsLoRA).")
    init: Literal["default", "gaussian", "pissa", "olora", "eva"] = Field("default", description=(
        "Adapter initialisation (peft): default (B = 0), gaussian, pissa (A and B from the weight's principal "
        "singular vectors, the residual stays in the base), olora (from a QR decomposition of the weight), eva (A "
        "from the principal components of each layer's inputs on the first training batches, B = 0; ranks "
        "redistributed between layers by explained variance; sft and pt)."))
    eva_batches: int = Field(4, ge=1, description=(
        "lora.init eva: training batches whose layer inputs EVA decomposes (cycled until the components converge)."))
    eva_rho: float = Field(2.0, ge=1.0, description=(
        "lora.init eva: a layer may take up to rho x rank (1 = every layer keeps rank; total rank stays the same)."))
    plus_ratio: float | None = Field(None, gt=0, description=(
        "LoRA+: B learns this many times faster than A (the paper uses 16); unset: one learning rate."))
    experts: bool = Field(False, description=(
        "Mixture-of-experts models: adapters on every expert's weights too (more adapter memory; off: attention, "
        "shared experts and dense layers only)."))
    train_router: bool = Field(False, description=(
        "Mixture-of-experts models: adapters on the routers too (default frozen: tuning them on little data "
        "unbalances the experts)."))

    @model_validator(mode="after")
    def _alpha_follows_rank(self) -> "LoraCfg":
        """Until alpha is given, it is 2 x rank (rank 8 had alpha 32, 4 x: a larger update). Set in __dict__, not
        assigned: alpha stays out of the fields given (--adapters refuses given settings that differ from the
        adapter's: train/preflight.py follow_adapter), and assignment would validate again."""
        if "alpha" not in self.model_fields_set:
            self.__dict__["alpha"] = 2 * self.rank
        return self

    @field_validator("targets", mode="before")
    @classmethod
    def _all_is_all_linear(cls, value: object) -> object:
        """`lora_target: all` (LLaMA-Factory) and `all-linear` (peft), alone or as a one-item list (`--lora.targets
        all`), mean peft's all-linear; the memory plan and peft would look for a module named "all"."""
        items = value if isinstance(value, list) else [value] if isinstance(value, str) else None
        if items is None:
            return value
        words = [str(item).strip() for item in items]
        every = [word for word in words if word.lower() in ALL_LINEAR]
        if not every:
            return value
        if len(words) > 1:
            raise ValueError(f"{every[0]} names every linear layer; give it alone, or list module names only")
        return "all-linear"


# The spellings of "every linear layer but the output head": peft's all-linear, LLaMA-Factory's all
ALL_LINEAR = ("all", "all-linear", "all_linear")


class GaloreCfg(Section):
    """GaLore (Zhao et al. 2024): full-parameter training whose Adam states live in a low-rank projection of each
    gradient (transformers' galore_adamw optimizers, galore-torch)."""

    rank: int = Field(128, ge=1, description="Rank of the projection the optimizer states live in.")
    update_interval: int = Field(200, ge=1, description="Steps between recomputing each projection (an SVD).")
    scale: float = Field(0.25, gt=0, description="Scale of the projected update (the paper's alpha).")
    layerwise: bool = Field(False, description="Update each layer in its backward (less memory; no gradient accumulation).")
    targets: str | list[str] = Field(r".*(attn|attention|mlp|feed_forward).*", description=(
        "The linear layers GaLore projects: a regex of module names, a list of names, or all-linear; the other "
        "weights take plain AdamW."))


class LisaCfg(Section):
    """LISA (Pan et al. 2024): full-parameter training of a few decoder layers at a time, sampled anew every
    interval; embeddings and the LM head always train."""

    layers: int = Field(2, ge=1, description="Decoder layers that train at a time.")
    interval: int = Field(20, ge=1, description="Optimizer steps between samplings of the layers.")


class FreezeCfg(Section):
    """Freeze tuning: full-weight training of the last N decoder layers (and any named modules); the rest frozen."""

    trainable_layers: int = Field(2, ge=0, description="The last N decoder layers train.")
    modules: list[str] = Field(default_factory=list, description=(
        "More modules that train, by name pattern (e.g. lm_head, embed_tokens, norm)."))


class LongLoraCfg(Section):
    """LongLoRA (Chen et al. 2024): LoRA (the lora section) plus trainable embeddings and norms, shifted sparse
    attention (S2-Attn) while training, RoPE scaled to the target length; saved merged, served with full attention."""

    target_length: int | None = Field(None, ge=8, description=(
        "Context length the model is extended to: RoPE is scaled by target_length / the model's "
        "max_position_embeddings (nothing to scale when the model already takes it). Unset: max_length."))
    rope_scaling: Literal["linear", "dynamic", "yarn", "none"] = Field("linear", description=(
        "How RoPE is stretched (transformers' rope_type, written into the saved config.json): linear (position "
        "interpolation, LongLoRA's choice), dynamic (NTK, scales only beyond the original length), yarn, or none."))
    group_size_ratio: float = Field(0.25, gt=0, le=1, description=(
        "S2-Attn group size as a share of each training sequence (LongLoRA: 1/4); half the heads use groups "
        "shifted by half a group. Training only: the saved model uses full attention."))
    trainable: list[Literal["embed", "norm"]] = Field(default_factory=lambda: ["embed", "norm"], description=(
        "Layers trained in full beside LoRA (LongLoRA: embed,norm; [] for plain LoRA with S2-Attn)."))


REFT_POSITIONS = re.compile(r"all|f(\d+)(?:\+l(\d+))?|l(\d+)")


def parse_reft_positions(text: str) -> tuple[int, int] | None:
    """LoReFT positions in pyreft's notation: (first N, last N) prompt tokens, or None for every token (all)."""
    match = REFT_POSITIONS.fullmatch(text.strip())
    if match is None:
        raise ValueError("not f<N>, l<N>, f<N>+l<N> or all (pyreft's notation: first/last prompt tokens, e.g. f1+l1)")
    if text.strip() == "all":
        return None
    first, last, only_last = match.groups()
    counts = (int(first or 0), int(last or only_last or 0))
    if counts == (0, 0):
        raise ValueError("names no token; use e.g. f1+l1")
    return counts


class ReftCfg(Section):
    """LoReFT (Wu et al. 2024): the base frozen, h + R^T(W h + b - R h) added to chosen layers' output hidden states at
    chosen prompt positions (models/reft.py). pyreft's keys, and its LoReFT defaults but for layers (pyreft's recipe
    names 4 of a 32-layer Llama's; all fits every model)."""

    layers: list[int] | Literal["all"] = Field("all", description=(
        "Decoder layers whose output is edited: all, or indices from 0 (e.g. 2,10,18,26 as pyreft's LoReFT recipe)."))
    rank: int = Field(4, ge=1, description="Rank of each intervention (pyreft's low_rank_dimension).")
    positions: str = Field("f1+l1", description=(
        "Prompt tokens edited: fN (first N), lN (last N), fN+lN, or all (every token, answer too, also while "
        "generating)."))
    share_weights: bool = Field(False, description=(
        "fN+lN: one intervention per layer for the first and the last positions (false: one each, as pyreft)."))
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the edit while training.")

    @field_validator("positions")
    @classmethod
    def _positions(cls, value: str) -> str:
        parse_reft_positions(value)
        return value.strip()

    @field_validator("layers", mode="before")
    @classmethod
    def _layers(cls, value: object) -> object:
        if value == "all" or value == ["all"]:
            return "all"
        items = value if isinstance(value, list) else [value]  # --reft.layers 3, or "2;10" as pyreft writes them
        return [int(v) if isinstance(v, int) else v for item in items
                for v in (str(item).replace(";", ",").split(",") if isinstance(item, str) else [item]) if v != ""]


class PeftCfg(Section):
    """Any other peft method by tuner name (adalora, vera, oft, boft, ia3, loha, lokr): its config's fields."""

    args: dict = Field(default_factory=dict, description=(
        "Fields of the peft config class (e.g. {r: 8} for vera; target_modules defaults to peft's per model type)."))


class PrivacyCfg(Section):
    """Differentially private training (DP-SGD through Opacus): each sample's gradient clipped, Gaussian noise added,
    batches drawn by Poisson sampling; the accountant's epsilon is reported. On when epsilon is set."""

    epsilon: float | None = Field(None, gt=0, description="Privacy budget of the whole run (e.g. 8); unset: DP off.")
    delta: float = Field(1e-5, gt=0, lt=1, description="Probability the epsilon bound may fail; keep it below 1/rows.")
    max_grad_norm: float = Field(1.0, gt=0, description="Each sample's gradient is clipped to this L2 norm.")
    accountant: Literal["prv", "rdp"] = Field("prv", description="Opacus accountant: prv (tighter) or rdp.")

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: object) -> object:
        """`--dp epsilon=8,delta=1e-5,max_grad_norm=1.0` (as the peers write it), or a bare `--dp` (epsilon 8)."""
        if data is True:
            return {"epsilon": 8.0}
        if isinstance(data, str):
            pairs = [part.partition("=") for part in data.split(",") if part.strip()]
            if any(not sep for _, sep, _ in pairs):
                raise ValueError(f"expected key=value pairs such as epsilon=8,delta=1e-5 (got {data!r})")
            return {key.strip(): value.strip() for key, _, value in pairs}
        return data


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
