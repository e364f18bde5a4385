"""Config of `tunesmith plan`: will this model train (or serve) on this machine, and with which settings?

    tunesmith plan Qwen/Qwen2.5-7B-Instruct --tuner lora --max-length 4096 --gpu-memory 24
"""

from __future__ import annotations

import logging
import warnings
from typing import ClassVar, Literal

from pydantic import Field, PrivateAttr, ValidationError, model_validator

from tunesmith.config.commands import DEFAULT_MODEL
from tunesmith.config.deepspeed import zero_layout
from tunesmith.config.sections import FreezeCfg, GaloreCfg, LisaCfg, LoraCfg, PrivacyCfg, ReftCfg, Section

log = logging.getLogger("tunesmith")
RLHF_METHODS = ("dpo", "kto", "orpo", "simpo", "cpo", "rm", "ppo", "grpo")
# The tuners whose size sft reads from their own section: tuner -> (its section, the key, plan's field for it). The
# size counts only for the tuner planned (a run's config.yaml holds every section, filled with defaults), and with
# that tuner an unset size is the section's default, what sft would train (galore.rank 128, reft.rank 4).
TUNER_SIZES: dict[str, tuple[type[Section], str, str]] = {
    "galore": (GaloreCfg, "rank", "lora_rank"), "reft": (ReftCfg, "rank", "lora_rank"),
    "lisa": (LisaCfg, "layers", "trained_layers"), "freeze": (FreezeCfg, "trainable_layers", "trained_layers")}

# `--json` is the flag users know (nvidia-smi, gh, docker); as a field it shadows pydantic's deprecated v1 `.json()`
# method, which nothing here calls.
warnings.filterwarnings("ignore", message='Field name "json" in "PlanConfig" shadows', category=UserWarning)


class PlanConfig(Section):
    """Estimate peak memory from the model's config.json (never its weights) and pick settings that fit.
    Run: tunesmith plan MODEL [--tuner lora] [--gpu-memory 24]"""

    model: str = Field(DEFAULT_MODEL, description="Hub id, local folder, or registry name; only its config.json is read.")
    task: Literal["causal-lm", "embedding", "reranker", "classification"] = Field("causal-lm", description=(
        "What sft would train (as `tunesmith sft --task`): the encoder tasks plan their own step (plan/encoders.py)."))
    tuner: Literal["auto", "full", "lora", "qlora", "dora", "galore", "lisa", "freeze", "adalora", "vera", "oft", "boft",
                   "ia3", "loha", "lokr", "longlora", "reft"] = Field("auto", description=(
        "auto = full if it fits comfortably, else lora, else qlora; or name one to check it (as tunesmith sft "
        "--tuner; peft's other adapters are planned as a LoRA of the same rank; longlora as a LoRA with trainable "
        "embeddings and norms; reft as sft's default interventions, 2 per layer, on the frozen base)."))
    trained_layers: int = Field(2, ge=1, description=(
        "lisa, freeze: decoder layers that train at a time (unset: lisa.layers or freeze.trainable_layers, as sft)."))
    dp: bool = Field(False, description="Differentially private training (sft --dp): a gradient per sample.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto = bfloat16 on GPUs that support it, else float32 (as tunesmith sft picks).")
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "sgd"] = Field(
        "adamw", description="adamw keeps 2 states per trainable weight; the 8-bit ones store them in 1 byte each.")
    lora_rank: int = Field(16, ge=1, description=(
        "Adapter rank (lora, qlora, dora); GaLore's projection rank; reft's intervention rank (unset there: "
        "galore.rank or reft.rank, 128 and 4 by default, as sft)."))
    lora_targets: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get adapters: all-linear or a list such as q_proj v_proj.")
    lora_experts: bool = Field(False, description=(
        "Mixture-of-experts models: adapters on every expert too (sft's lora.experts); peft then keeps a merged copy "
        "of each layer's experts for backward."))
    max_length: int = Field(2048, ge=8, description="Training sequence length in tokens (sequences padded or packed to it).")
    batch_size: int = Field(4, ge=1, description="Largest micro-batch to consider (samples per device per step).")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps (recomputed when global_batch is set).")
    global_batch: int | None = Field(None, ge=1, description="Target samples per optimizer step over all devices.")
    gradient_checkpointing: bool | Literal["auto", "offload"] = Field(
        "auto", description=("auto = only when it is needed to fit; true/false/offload (layer inputs in CPU memory) to "
                             "check one choice."))
    attn: Literal["sdpa", "flash", "eager", "flex"] = Field(
        "sdpa", description="Attention kernel: eager stores seq x seq scores per layer; the others do not.")
    packing: bool = Field(False, description="Samples concatenated to max_length (padding-free, as TRL packs).")
    nproc_per_node: int = Field(1, ge=1, description="Processes (GPUs) per node, as `tunesmith sft --nproc-per-node`.")
    nnodes: int = Field(1, ge=1, description="Nodes, as `tunesmith sft --nnodes`.")
    deepspeed: str | None = Field(None, description=(
        "zero1 | zero2 | zero3 | zero2-offload | zero3-offload (or a DeepSpeed JSON), as `tunesmith sft --deepspeed`."))
    fsdp: bool | Literal["full-shard", "shard-grad-op", "hybrid-shard"] = Field(False, description=(
        "PyTorch FSDP2, as `tunesmith sft --fsdp` (true = full-shard; hybrid-shard shards within a node)."))
    sequence_parallel: int = Field(1, ge=1, description="Ranks that share one sequence (each holds max_length / N tokens).")
    tensor_parallel: int = Field(1, ge=1, description=(
        "Ranks that share each layer's linears, as `tunesmith sft --tensor-parallel` (tuner full): each holds 1/N of "
        "them; the processes beyond N shard the rest with FSDP2."))
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage by number: 1 shards optimizer states, 2 +gradients, 3 +weights.")
    world_size: int | None = Field(None, ge=1, description="Processes in all (default: nproc_per_node x nnodes).")
    offload: bool = Field(False, description="Keep optimizer states (and with ZeRO-3 the weights) in CPU RAM.")
    gpu_memory: float | None = Field(None, gt=0, description="GiB per GPU to plan for, instead of what is detected.")
    inference: bool = Field(False, description="Estimate serving instead: weights + KV cache + activations.")
    context: int = Field(4096, ge=1, description="Tokens per sequence held in the KV cache (inference).")
    images_per_sample: int = Field(1, ge=0, description=(
        "Vision-language models: pictures per sample (their image tokens count within max_length / context)."))
    image_size: int | None = Field(None, ge=1, description=(
        "Vision-language models: picture side in pixels the image tokens are counted at (default: the family's usual "
        "size, 448 for Qwen2-VL's dynamic resolution)."))
    json: bool = Field(False, description="Print the plan as JSON instead of a table.")

    command: ClassVar[str] = "plan"
    positional: ClassVar[tuple[str, ...]] = ("model",)
    moved: ClassVar[dict[str, str | dict[str, str]]] = {"method": "tuner"}  # as in the training commands
    # A training command's keys that plan has no field for: `tunesmith plan -c sft.yaml` (or the same flags as sft)
    # plans that run. Its lora section gives the adapter's shape; the rest (data, schedule, output...) leaves memory
    # as it is and is left aside. The loader lets these names through (config/load.py _renamed).
    retired: ClassVar[dict[str, str]] = {}
    # The training commands' sections plan reads: their keys are flags and YAML keys here as in sft (`--dp.epsilon 8`,
    # `--lora.rank 8`, `galore: {rank: 64}`, `dp: {epsilon: 8}`), checked against sft's section (config/load.py
    # _keys_under).
    training_sections: ClassVar[dict[str, type[Section]]] = {
        "lora": LoraCfg, "dp": PrivacyCfg, **{tuner: section for tuner, (section, _, _) in TUNER_SIZES.items()}}

    @model_validator(mode="before")
    @classmethod
    def _training_keys(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        sized = {name: data.pop(name) for name in TUNER_SIZES if name in data}
        lora = data.pop("lora", None)
        tuner = data.get("tuner", data.get("method"))
        if tuner in TUNER_SIZES:  # the size sft reads for this tuner, unless plan's own field is given
            section, key, field = TUNER_SIZES[tuner]
            read = _read(tuner, section, sized.get(tuner, {}))
            # --lora-rank (loaded as lora.rank) was the way to plan GaLore's and ReFT's rank: kept where the tuner's
            # own section does not name one
            lora_rank = field == "lora_rank" and isinstance(lora, dict) and "rank" in lora
            if key in read.model_fields_set or not lora_rank:
                data.setdefault(field, getattr(read, key))
        for key in ("rank", "targets", "experts"):
            if isinstance(lora, dict) and key in lora:
                data.setdefault(f"lora_{key}", lora[key])
        if data.get("method") in RLHF_METHODS:  # an rlhf file: the algorithm, not how the weights train
            data.pop("method")
        if isinstance(data.get("dp"), (dict, str)):  # sft's dp section (or --dp epsilon=8,...): private with an epsilon
            data["dp"] = _private(data["dp"])
        aside = sorted(k for k in data if k in cls.retired)
        if (aside or sized or lora is not None) and data.get("tuner", data.get("method")) is None:
            data["tuner"] = "lora"  # what the training command trains when its file names no tuner
        for key in aside:
            data.pop(key)
        for key in [k for k, v in data.items() if v is None and k in ("packing", "gradient_checkpointing", "fsdp")]:
            data.pop(key)  # a run's config.yaml: unset means chosen for the machine, plan's auto
        if aside:
            named = ", ".join(aside[:6]) + (f" and {len(aside) - 6} more" if len(aside) > 6 else "")
            log.info("note: plan leaves aside %s (they do not change the memory a step needs)", named)
        return data

    @model_validator(mode="before")
    @classmethod
    def _deepspeed_preset(cls, data: object) -> object:
        # --deepspeed zero3-offload or a JSON file names the ZeRO stage and the offload, as sft reads them;
        # sft's fsdp_offload is plan's offload under FSDP
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.pop("fsdp_offload", False) and data.get("fsdp"):
            data["offload"] = True
        spec = data.get("deepspeed")
        if isinstance(spec, str) and spec:
            stage, offloaded = zero_layout(spec)
            data = {**data, "zero_stage": data.get("zero_stage") or stage, "offload": data.get("offload") or offloaded}
        return data

    # The reft section as sft reads it (layers, positions, share_weights place the interventions), kept whole for the
    # estimate; the section is not a field (its keys are sft's, listed by `tunesmith sft --help`)
    _reft: ReftCfg = PrivateAttr(default_factory=ReftCfg)

    @model_validator(mode="wrap")
    @classmethod
    def _reft_section(cls, data: object, handler) -> "PlanConfig":
        # a wrap validator defined after the "before" ones sees the data first, before _training_keys takes the
        # sections out of it
        given = data.get("reft") if isinstance(data, dict) and data.get("tuner", data.get("method")) == "reft" else None
        cfg = handler(data)
        if given is not None:
            cfg._reft = _read("reft", ReftCfg, given)
        return cfg

    @property
    def reft(self) -> ReftCfg:
        return self._reft

    @model_validator(mode="after")
    def _check(self) -> "PlanConfig":
        if self.fsdp and self.zero_stage:
            raise ValueError("fsdp: choose FSDP or DeepSpeed ZeRO, not both; drop --fsdp or --deepspeed")
        if self.offload and not (self.fsdp or self.zero_stage):
            raise ValueError("offload: CPU offload needs sharding; add --zero-stage 2 (or 3) or --fsdp")
        if self.tensor_parallel > 1:  # as the training commands refuse them (config/commands.py)
            if self.tuner not in ("auto", "full"):
                raise ValueError(f"tensor_parallel: trains with --tuner full only (peft's adapters do not run on "
                                 f"tensor-parallel layers); tuner is {self.tuner}")
            if self.fsdp or self.zero_stage or self.sequence_parallel > 1:
                raise ValueError("tensor_parallel: not combined with --fsdp, --deepspeed or --sequence-parallel (the "
                                 "processes beyond N shard with FSDP2 already)")
            if (self.world_size or self.nproc_per_node * self.nnodes) % self.tensor_parallel:
                raise ValueError(f"tensor_parallel: {self.tensor_parallel} does not divide the processes; pass "
                                 f"--nproc-per-node {self.tensor_parallel} (or a multiple)")
        return self


def _private(section: dict | str) -> bool:
    """Whether sft's dp section turns DP-SGD on, read by sft's own PrivacyCfg (so `--dp epsilon=8` and a bad value
    mean here what they mean to sft)."""
    return _read("dp", PrivacyCfg, section).epsilon is not None


def _read(name: str, section: type[Section], given: object) -> Section:
    """A training command's section read by its own class, a bad value named as sft names it (`dp.epsilon: ...`)."""
    try:
        return section.model_validate(given)
    except ValidationError as err:
        first = err.errors()[0]
        where = f"{name}.{'.'.join(str(p) for p in first['loc'])}" if first["loc"] else name
        raise ValueError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None


def _training_only_keys() -> dict[str, str]:
    """Keys of sft, pt and rlhf configs that PlanConfig has no field for, besides the sections it reads."""
    from tunesmith.config.commands import PTConfig, SFTConfig
    from tunesmith.config.rlhf import RLHFConfig

    names = {n for c in (SFTConfig, PTConfig, RLHFConfig) for n in c.model_fields} - set(PlanConfig.model_fields)
    read = {"lora", "method", "tuner", *TUNER_SIZES}
    return {name: "a training key plan leaves aside" for name in sorted(names - read)}


PlanConfig.retired = {**_training_only_keys(), "lora": "read as lora_rank, lora_targets, lora_experts",
                      **{tuner: f"{tuner}.{key} read as {field} when the tuner is {tuner}"
                         for tuner, (_, key, field) in TUNER_SIZES.items()}}
