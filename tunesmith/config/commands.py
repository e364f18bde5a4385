"""One validated config per command. The CLI flags, the YAML file and the Python API all fill these classes.

YAML keys are the field names; flags are the same names with dashes (`--output-dir`), underscores accepted too.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from tunesmith.config.eval import Metric, parse_gate
from tunesmith.config.local_paths import local_path
from tunesmith.config.encoders import (DEFAULT_ENCODER, ClassificationCfg, EmbeddingCfg, RerankerCfg, Task,
                                       check_encoder_task)
from tunesmith.config.sections import (GENERATION_SHORTCUTS, Device, Dtype, FreezeCfg, GaloreCfg, GenerationCfg,
                                       LisaCfg, LongLoraCfg, LoraCfg, PeftCfg, PrivacyCfg, ReftCfg, Section,
                                       changed)
from tunesmith.config.speculative import SPECULATIVE_HELP, check_speculative

DEFAULT_MODEL = "smollm2-135m-instruct"
# How the weights train (`tuner`). Adapter tuners save an adapter folder that loads on the untouched base; the others
# change the weights themselves and save a whole model.
LORA_TUNERS = ("lora", "qlora", "dora")
PEFT_TUNERS = ("adalora", "vera", "oft", "boft", "ia3", "loha", "lokr")  # peft's other methods, by name
FULL_WEIGHT_TUNERS = ("full", "galore", "lisa", "freeze")
Kernels = Literal["auto", "liger", "none"]
KERNELS_HELP = ("Fused layer kernels: auto = liger's RMSNorm, RoPE and SwiGLU on CUDA when liger-kernel is installed "
                "(pip install 'tunesmith[gpu]'); liger = the same, an error where it cannot run; none = the model's own.")
Tuner = Literal["lora", "qlora", "dora", "adalora", "vera", "oft", "boft", "ia3", "loha", "lokr", "longlora", "full",
                "galore", "lisa", "freeze", "reft"]
# The section each tuner reads; setting another tuner's section is refused (it would be silently ignored).
TUNER_SECTIONS = {"galore": ("galore",), "lisa": ("lisa",), "freeze": ("freeze",), "peft": PEFT_TUNERS,
                  "longlora": ("longlora",), "reft": ("reft",)}


Truncation = Literal["error", "drop", "left", "right"]
TRUNCATION_HELP = (
    "A row longer than max_length: error = stop and name it (file:line); drop = leave it out (counted); left = keep "
    "its last max_length tokens (the start of the prompt goes); right = keep its first max_length tokens (an answer "
    "cut there loses its end-of-turn token: counted and named). Counts land in config.yaml.")


class TrainConfig(Section):
    """The common keys of every training command (sft, pt, rlhf)."""

    # local_path(...): a relative path is written absolute in the run's config.yaml (config/local_paths.py)
    model: str = Field(DEFAULT_MODEL, description="Hub id, local folder, or registry name (tunesmith models).",
                       json_schema_extra=local_path())
    adapters: str | None = Field(None, description="Start from this adapter folder (e.g. runs/NAME/final).",
                                 json_schema_extra=local_path())
    dataset: list[str] = Field(..., min_length=1, description=(
        "Files, folders, registry names or hub ids; name#N samples N rows."), json_schema_extra=local_path("dataset"))
    val_dataset: list[str] = Field(default_factory=list, description="Held-out data for eval loss.",
                                   json_schema_extra=local_path("dataset"))
    val_split: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of dataset held out for eval loss when val_dataset is empty.")
    continue_from: str | None = Field(None, description=(
        "Incremental retraining: start from this run's final weights (runs/NAME; adapter or full) and train only on "
        "rows it and the runs it continued from have not seen (content hashes in each run's seen_rows.json)."),
        json_schema_extra=local_path())
    replay: float = Field(0.0, ge=0.0, le=1.0, description=(
        "With continue_from: old rows mixed in against forgetting, as a share of the new rows (0.1: one old row per "
        "ten new), drawn with the seed from the dataset's seen rows, else from the earlier run's own dataset."))
    tuner: Tuner = Field("lora", description=(
        "How the weights train. Adapters: lora | qlora (4-bit NF4 base) | dora | adalora | vera | oft | boft | ia3 | "
        "loha | lokr. Whole model: full | galore (low-rank optimizer states) | lisa (a few sampled layers at a "
        "time) | freeze (the last layers). longlora: LoRA + embeddings and norms with shifted sparse attention and "
        "RoPE scaled to a longer context, saved merged (sft, pt). reft: LoReFT interventions on hidden states at chosen "
        "layers and prompt positions, base frozen (sft)."))
    lora: LoraCfg = Field(default_factory=LoraCfg, description="Adapter settings (tuner lora, qlora, dora; rank also "
                          "for the other adapters).")
    galore: GaloreCfg = Field(default_factory=GaloreCfg, description="GaLore settings (tuner galore).")
    lisa: LisaCfg = Field(default_factory=LisaCfg, description="LISA settings (tuner lisa).")
    freeze: FreezeCfg = Field(default_factory=FreezeCfg, description="What trains with tuner freeze.")
    peft: PeftCfg = Field(default_factory=PeftCfg, description="The peft config of tuner adalora, vera, oft, boft, "
                          "ia3, loha or lokr.")
    longlora: LongLoraCfg = Field(default_factory=LongLoraCfg, description="LongLoRA settings (tuner longlora; "
                                  "LoRA's own in the lora section).")
    reft: ReftCfg = Field(default_factory=ReftCfg, description="LoReFT settings (tuner reft).")
    freeze_vision_tower: bool | None = Field(None, description=(
        "Vision-language models: keep the vision tower's weights as they are (no adapters there, not trained in full "
        "fine-tuning). Unset: on."))
    freeze_aligner: bool | None = Field(None, description=(
        "Vision-language models: keep the aligner (the projector between vision tower and language model) as it is. "
        "Unset: on for adapter tuners (LoRA targets the language model only), off for full."))
    vision_lr: float | None = Field(None, gt=0, description=(
        "Vision-language models: learning rate of the vision tower's trained weights (its adapters with LoRA), as "
        "ms-swift's vit_lr; needs freeze_vision_tower false. Unset: learning_rate."))
    aligner_lr: float | None = Field(None, gt=0, description=(
        "Vision-language models: learning rate of the aligner's trained weights (its adapters with LoRA); needs the "
        "aligner trained (freeze_aligner false, the default for full). Unset: learning_rate."))
    neftune_alpha: float | None = Field(None, gt=0, description=(
        "NEFTune: uniform noise of this scale (the paper uses 5) on the input embeddings while training, never at "
        "inference."))
    max_length: int = Field(2048, ge=8, description="Longest training sequence in tokens.")
    truncation: Truncation = Field("error", description=TRUNCATION_HELP)
    packing: bool | None = Field(None, description=(
        "Concatenate samples up to max_length, padding-free; they do not attend to each other (batch_size then counts "
        "rows of max_length tokens). Unset: on where the varlen attention kernel runs (CUDA, bfloat16/float16), off "
        "elsewhere (there a packed batch needs a dense block mask)."))
    epochs: float = Field(3.0, gt=0, description="Passes over the data.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1 = run all epochs).")
    batch_size: int = Field(4, ge=1, description="Samples per device per step.")
    grad_accum: int = Field(1, ge=1, description="Steps whose gradients add up before an update.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate (2e-4 suits LoRA, 1e-5 full).")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name: cosine, linear, constant...")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Share of steps spent warming up the learning rate.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    gradient_checkpointing: bool | Literal["offload"] | None = Field(None, description=(
        "Recompute activations in backward: less memory, 30-50% more compute. offload: also keep each layer's input in "
        "pinned CPU memory until backward (copied on a side stream; CUDA). Unset (or auto): on a CUDA GPU only when the "
        "memory plan says the run would not fit without it, then on as few layers as fit, offloaded if even all do "
        "not fit; off elsewhere."))
    checkpoint_every: int | None = Field(None, ge=1, description=(
        "With gradient checkpointing, recompute only every N-th decoder layer (1 = all); the others keep their "
        "activations: faster, more memory. Unset: chosen with gradient_checkpointing, else 1."))
    save_steps: int = Field(100, ge=1, description="Write a checkpoint every N steps.")
    save_total_limit: int | None = Field(3, description="Keep at most N checkpoints (None = all).")
    logging_steps: int = Field(5, ge=1, description="Log metrics every N steps.")
    eval_steps: int | None = Field(None, description="Evaluate every N steps (default: save_steps).")
    seed: int = Field(42, description="Seed for data order, initialisation and sampling.")
    output_dir: str | None = Field(None, description="Run folder (default runs/<command>-<time>).",
                                   json_schema_extra=local_path())
    resume: bool | str = Field(False, description=(
        "true = continue from the last complete checkpoint; or a checkpoint path."), json_schema_extra=local_path())
    overwrite: bool = Field(False, description="Start over in an output_dir that already holds a run.")
    skip_bad_rows: bool = Field(False, description="Skip rows that fail the data check (counted) instead of stopping.")
    dedupe: bool = Field(False, description=(
        "Before training, remove exact and near-duplicate rows (MinHash), empty and garbage ones, as `tunesmith data "
        "clean` does; counts in config.yaml. Needs pip install 'tunesmith[clean]'."))
    redact_pii: bool = Field(False, description=(
        "Before training, mask e-mails, phone, card and ID numbers (Chinese ones too), IBANs, IP and street addresses "
        "as <ENTITY_TYPE>, as `tunesmith data clean` does. Needs pip install 'tunesmith[clean]'."))
    encoding: str = Field("utf-8", description="Text encoding of CSV/JSON/JSONL dataset files, e.g. gbk, utf-16 (a utf-8 BOM is read).")
    system: str | None = Field(None, description="System prompt added to conversations that have none.")
    chat_template_kwargs: dict = Field(default_factory=dict, description=(
        "Extra variables for the chat template, e.g. {enable_thinking: false} for Qwen3; saved with the template in "
        "final/, so infer and deploy render as training did."))
    dtype: Dtype = Field("auto", description="auto = bfloat16 on GPUs that support it, else float32.")
    device: Device = Field("auto", description="auto = cuda, then mps, then cpu.")
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"], description="tensorboard, wandb, mlflow, or none.")
    strict_memory: bool = Field(False, description="Refuse to start when `tunesmith plan` says the run will not fit (default: warn).")
    # Scale out (train/launch.py): torchrun's layout flags, each also read from its environment variable
    nproc_per_node: int = Field(1, ge=1, description="Processes on this node, one per GPU; > 1 starts torchrun (env NPROC_PER_NODE).")
    nnodes: int = Field(1, ge=1, description="Nodes in the job; start the same command on each (env NNODES).")
    node_rank: int = Field(0, ge=0, description="This node's rank, 0 to nnodes-1 (env NODE_RANK).")
    master_addr: str | None = Field(None, description="Address of node 0, needed with nnodes > 1 (env MASTER_ADDR).")
    master_port: int = Field(29500, ge=1, le=65535, description="Port of node 0's rendezvous (env MASTER_PORT).")
    deepspeed: str | None = Field(None, description=(
        "DeepSpeed ZeRO: zero1 | zero2 | zero3 | zero2-offload | zero3-offload, or a path.json ('auto' values are filled "
        "from this config). Needs pip install 'tunesmith[deepspeed]'."), json_schema_extra=local_path())
    fsdp: Literal["full-shard", "shard-grad-op", "hybrid-shard"] | None = Field(None, description=(
        "PyTorch FSDP2: full-shard (ZeRO-3-like), shard-grad-op (ZeRO-2-like), hybrid-shard (shard within a node, "
        "replicate across nodes)."))
    fsdp_offload: bool = Field(False, description="With fsdp: keep parameters and optimizer states in CPU RAM.")
    sequence_parallel: int = Field(1, ge=1, description=(
        "Split each sequence over N ranks for long contexts: Ulysses (DeepSpeed ALST) with --deepspeed, PyTorch's "
        "context parallel with --fsdp."))
    tensor_parallel: int = Field(1, ge=1, description=(
        "Shard each layer's linears over N ranks (transformers' tensor-parallel plan of the model's family: Llama, "
        "Qwen2/3, Mistral, Gemma, Phi, Mixtral, Qwen MoE...), for models too big for one GPU; tuner full. N divides "
        "the processes; the rest of them shard with FSDP2 (transformers' own)."))
    watchdog_timeout: int = Field(600, ge=0, description=(
        "With several processes: seconds without a finished step on a rank before every rank writes its Python "
        "stack to hang-rank-N.txt in the run folder and the run exits non-zero (0 = off)."))

    command: ClassVar[str] = "train"
    # sft's `method` of earlier releases (and PRODUCT.md's `method: lora`): rlhf's --method names the algorithm, so
    # how the weights train is `tuner` in every command.
    moved: ClassVar[dict[str, str | dict[str, str]]] = {"method": "tuner"}

    @field_validator("gradient_checkpointing", mode="before")
    @classmethod
    def _auto_is_unset(cls, value: object) -> object:
        return None if value == "auto" else value

    @property
    def trains_adapter(self) -> bool:
        """True when the run trains a peft adapter over frozen base weights (saved as an adapter folder)."""
        return self.tuner not in FULL_WEIGHT_TUNERS

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.replay and not self.continue_from:
            raise ValueError("replay: mixes in rows an earlier run saw; it needs --continue-from runs/NAME")
        if self.continue_from and self.adapters and "adapters" in self.model_fields_set and not \
                str(self.adapters).startswith(str(self.continue_from).rstrip("/")):
            raise ValueError("continue_from: starts from that run's weights; drop --adapters")
        if not self.trains_adapter and self.adapters:
            raise ValueError(f"adapters: tuner {self.tuner} trains the weights themselves and cannot continue an "
                             "adapter; drop --adapters or use lora")
        for section, readers in TUNER_SECTIONS.items():
            if changed(self, section) and self.tuner not in readers:
                raise ValueError(f"{section}: only read with --tuner {' or '.join(readers)} (tuner is {self.tuner})")
        if self.lora.init in ("pissa", "olora", "eva") and self.tuner not in LORA_TUNERS:
            raise ValueError(f"lora.init: {self.lora.init} initialises LoRA adapters; tuner is {self.tuner}")
        if self.lora.init == "eva" and (self.command not in ("sft", "pt") or getattr(self, "task", "causal-lm")
                                        != "causal-lm"):
            raise ValueError("lora.init: eva reads the layer inputs of sft and pt batches (chat or text); use "
                             "default, gaussian, pissa or olora here")
        if (changed(self.lora, "eva_batches") or changed(self.lora, "eva_rho")) and self.lora.init != "eva":
            raise ValueError("lora.eva_batches/eva_rho: only read with lora.init eva")
        if self.lora.plus_ratio and self.tuner not in LORA_TUNERS:
            raise ValueError(f"lora.plus_ratio: LoRA+ sets the learning rates of LoRA's A and B; tuner is {self.tuner}")
        if self.tuner == "longlora" and (self.command not in ("sft", "pt") or self.adapters or
                                         getattr(self, "task", "causal-lm") != "causal-lm"):
            raise ValueError("tuner: longlora extends a causal LM's context with sft or pt, from base weights (its "
                             "result is a merged model: continue it with --model runs/NAME/final)")
        if self.tuner == "longlora" and (self.fsdp or str(self.deepspeed or "").startswith("zero3") or
                                         self.sequence_parallel > 1):
            raise ValueError("tuner: longlora merges its adapters into whole weights on one rank and folds each "
                             "sequence into attention groups: no FSDP, ZeRO-3 or sequence parallel (DDP and "
                             "ZeRO-1/2 work)")
        several = self.nproc_per_node * self.nnodes > 1
        if self.tuner == "reft":
            check_reft(self, several)
        if self.tuner == "lisa" and several:
            raise ValueError("tuner: lisa changes which layers train every interval, which DDP's gradient buckets "
                             "cannot follow; run it in one process or use freeze or galore")
        if self.tuner == "galore" and (self.deepspeed or self.fsdp):
            raise ValueError("tuner: galore projects each full gradient in the optimizer, which sharded states "
                             "(DeepSpeed, FSDP) do not hand it; drop --deepspeed/--fsdp")
        if self.tuner == "galore" and self.galore.layerwise and (several or self.grad_accum > 1):
            raise ValueError("galore.layerwise: updates each layer inside backward, so it needs one process and "
                             "grad_accum 1")
        if self.gradient_checkpointing == "offload" and (self.deepspeed or self.fsdp):
            raise ValueError("gradient_checkpointing: offload keeps layer inputs in this process's CPU memory, beside "
                             "DeepSpeed's or FSDP's own wrapping; use --deepspeed zero3-offload or --fsdp-offload, or "
                             "--gradient-checkpointing true")
        if self.lora.plus_ratio and (self.deepspeed or self.fsdp):
            raise ValueError("lora.plus_ratio: LoRA+ builds its own optimizer, which DeepSpeed and FSDP replace; drop "
                             "--deepspeed/--fsdp")
        check_part_lrs(self)
        if self.deepspeed and self.fsdp:
            raise ValueError("fsdp: choose DeepSpeed or FSDP, not both; drop --fsdp or --deepspeed")
        if self.fsdp_offload and not self.fsdp:
            raise ValueError("fsdp_offload: needs --fsdp full-shard (or shard-grad-op)")
        if self.tensor_parallel > 1:
            check_tensor_parallel(self)
        return self


def check_part_lrs(cfg: TrainConfig) -> None:
    """vision_lr / aligner_lr set the learning rate of a part that trains; a frozen part has nothing to set it on. The
    defaults are VisionRun.start's (train/vision.py): tower frozen unless said, aligner frozen for adapter tuners."""
    if cfg.vision_lr and cfg.freeze_vision_tower is not False:
        raise ValueError("vision_lr: the vision tower is frozen (freeze_vision_tower is on unless set), so nothing "
                         "would learn at this rate; add --freeze-vision-tower false or drop --vision-lr")
    aligner_frozen = cfg.freeze_aligner if cfg.freeze_aligner is not None else cfg.trains_adapter
    if cfg.aligner_lr and aligner_frozen:
        why = "freeze_aligner is true" if cfg.freeze_aligner else f"the default for tuner {cfg.tuner}"
        raise ValueError(f"aligner_lr: the aligner is frozen ({why}), so nothing would learn at this rate; add "
                         "--freeze-aligner false or drop --aligner-lr")
    if (cfg.vision_lr or cfg.aligner_lr) and (cfg.lora.plus_ratio or cfg.deepspeed or cfg.fsdp):
        raise ValueError("vision_lr/aligner_lr: tunesmith builds the optimizer with one parameter group per part, "
                         "which LoRA+ (lora.plus_ratio), DeepSpeed and FSDP replace with their own; drop one of them")


def check_reft(cfg: TrainConfig, several: bool) -> None:
    """What LoReFT (models/reft.py) is wired for: sft of a causal LM from the base, in one process."""
    if cfg.command != "sft" or getattr(cfg, "task", "causal-lm") != "causal-lm":
        raise ValueError("tuner: reft edits hidden states at positions of each chat prompt; it trains with sft of a "
                         "causal LM (rlhf's reference models and rollouts, pt's prompt-less text and the encoder tasks "
                         "are not wired for it)")
    if cfg.adapters or cfg.continue_from:
        raise ValueError("tuner: reft trains new interventions from the base model; drop --adapters/--continue-from")
    if several or cfg.deepspeed or cfg.fsdp or cfg.sequence_parallel > 1 or cfg.tensor_parallel > 1:
        raise ValueError("tuner: reft runs in one process (its hooks are not wired for DDP, DeepSpeed, FSDP or "
                         "sequence/tensor parallel); its trainable weights are a few thousand per layer")


def check_tensor_parallel(cfg: TrainConfig) -> None:
    """What tensor parallelism (transformers' DTensor plan, train/launch.py) cannot combine with, said at load."""
    if cfg.command not in ("sft", "pt") or getattr(cfg, "task", "causal-lm") != "causal-lm":
        raise ValueError("tensor_parallel: sft and pt of a causal LM only (reference models and rollouts of rlhf, "
                         "and the encoder tasks, are not run on tensor-parallel layers); use --fsdp full-shard")
    if cfg.tuner != "full":
        # peft 0.21's LoRA over transformers 5.23's DTensor layers: a rowwise layer (o_proj, down_proj) fails in its
        # first forward (a shape error), and adapters on colwise layers train to other losses than one process.
        raise ValueError(f"tensor_parallel: trains the whole model (--tuner full); peft's adapters do not run on "
                         f"tensor-parallel layers (tuner is {cfg.tuner}). To shard a {cfg.tuner} run use --fsdp "
                         "full-shard or --deepspeed zero3")
    refused = {"deepspeed": "DeepSpeed has its own tensor parallel (AutoTP); drop --deepspeed",
               "fsdp": "the processes beyond the tensor-parallel ones are sharded with FSDP2 already; drop --fsdp",
               "sequence_parallel": "not combined with sequence parallel; choose one",
               # transformers 5.23 checkpoints no optimizer state of a model sharded at load, so nothing resumes
               "resume": "a tensor-parallel run cannot resume (its checkpoints hold the weights only); drop --resume"}
    for key, why in refused.items():
        if getattr(cfg, key) != type(cfg).model_fields[key].default:
            raise ValueError(f"tensor_parallel: {why}")


class SFTConfig(TrainConfig):
    """Supervised fine-tuning on conversations, or (--task) of an embedding, reranker or classifier model.
Run: tunesmith sft -c sft.yaml"""

    task: Task = Field("causal-lm", description=(
        "What the model learns: causal-lm (chat answers), embedding (a bi-encoder on query/positive/negative rows), "
        "reranker (a cross-encoder on query/document/label rows) or classification (text/label rows). The encoder "
        "tasks default to the model all-minilm-l6-v2."))
    embedding: EmbeddingCfg = Field(default_factory=EmbeddingCfg, description="Settings of --task embedding.")
    reranker: RerankerCfg = Field(default_factory=RerankerCfg, description="Settings of --task reranker.")
    classification: ClassificationCfg = Field(default_factory=ClassificationCfg, description=(
        "Settings of --task classification."))
    loss_on: Literal["assistant", "last", "all"] = Field(
        "assistant", description="assistant = every assistant turn; last = the final one; all = every token."
    )
    model_name: str = Field("Tunesmith Assistant", description="Fills {{name}} in the self-cognition dataset.")
    model_author: str = Field("the tunesmith community", description="Fills {{author}} in the self-cognition dataset.")
    kernels: Kernels = Field("auto", description=KERNELS_HELP)
    dp: PrivacyCfg = Field(default_factory=PrivacyCfg, description=(
        "Differential privacy (Opacus DP-SGD), e.g. --dp epsilon=8,delta=1e-5,max_grad_norm=1.0; tuner lora, qlora "
        "or full. Needs pip install 'tunesmith[privacy]'."))
    eval_dataset: list[str] = Field(default_factory=list, description=(
        "Generation eval while training: at each eval step (eval_steps) and the last, the model answers the first "
        "eval_generate_rows rows greedily and eval_metrics scores them (tunesmith eval's metrics) into metrics.jsonl "
        "(eval_<column>) and eval_metrics.png beside loss.png."), json_schema_extra=local_path("dataset"))
    eval_metrics: list[Metric] = Field(default_factory=lambda: ["rouge"], description=(
        "Metrics of eval_dataset: exact_match, bleu, rouge, bertscore, format, accuracy."))
    eval_generate_rows: int = Field(8, ge=1, description="Rows of eval_dataset answered at each eval step.")
    eval_max_tokens: int = Field(128, ge=1, description="Longest answer per row at each eval step.")
    eval_gate: str | None = Field(None, description=(
        "METRIC>=VALUE, e.g. rouge>=0.3 (rouge = rougeL): after training and saving, exit non-zero (3) when the last "
        "eval step fails it; for scripted pipelines."))
    command: ClassVar[str] = "sft"

    @model_validator(mode="before")
    @classmethod
    def _encoder_default_model(cls, data: object) -> object:
        # The encoder tasks' default model is an encoder (the shipped MiniLM), not the chat model.
        if isinstance(data, dict) and data.get("task", "causal-lm") != "causal-lm" and "model" not in data:
            data = {**data, "model": DEFAULT_ENCODER}
        return data

    @model_validator(mode="after")
    def _check_task(self) -> "SFTConfig":
        check_encoder_task(self)
        return self

    @model_validator(mode="after")
    def _check_generation_eval(self) -> "SFTConfig":
        if not self.eval_dataset:
            for key in ("eval_gate", "eval_metrics", "eval_generate_rows", "eval_max_tokens"):
                if changed(self, key):
                    raise ValueError(f"{key}: sets the generation eval of --eval-dataset FILE; give that too")
            return self
        if self.task != "causal-lm":
            raise ValueError(f"eval_dataset: generation eval is for causal-lm; task {self.task} has its own eval")
        if self.nproc_per_node * self.nnodes > 1 or self.deepspeed or self.fsdp:
            raise ValueError("eval_dataset: generation during training runs in one process (no DeepSpeed/FSDP); "
                             "score the run afterwards with tunesmith eval --adapters RUN/final")
        if self.eval_gate:
            parse_gate(self.eval_gate, self.eval_metrics)
        return self

    @model_validator(mode="after")
    def _check_private(self) -> "SFTConfig":
        if self.dp.epsilon is None:
            return self
        refusals = {
            "packing": (self.packing, "a packed row mixes samples, so no gradient would be one sample's; set "
                        "packing: false"),
            "grad_accum": (self.grad_accum > 1, "DP-SGD draws each step's batch by Poisson sampling and clips per "
                           "sample; raise batch_size instead of grad_accum"),
            "tuner": (self.tuner not in ("lora", "qlora", "full"), f"dp trains lora, qlora or full (Opacus' "
                      f"per-sample gradients); tuner is {self.tuner}"),
            "nproc_per_node": (self.nproc_per_node * self.nnodes > 1 or bool(self.deepspeed or self.fsdp),
                               "dp runs in one process (no DeepSpeed/FSDP)"),
            "lora.plus_ratio": (bool(self.lora.plus_ratio), "dp builds its own optimizer (Opacus' DPOptimizer)"),
            "lora.init": (self.lora.init == "eva", ("eva runs the model on training batches before Opacus wraps "
                                                    "it; use default, gaussian, pissa or olora")),
        }
        for key, (refused, why) in refusals.items():
            if refused:
                raise ValueError(f"{key}: {why}")
        return self


class PTConfig(TrainConfig):
    """Continued pretraining on raw text (`text` column). Run: tunesmith pt -c pt.yaml"""

    packing: bool = Field(True, description="Concatenate texts into max_length blocks (usual for pretraining).")
    truncation: Literal["split", "error", "drop", "left", "right"] = Field("split", description=(
        "A text longer than max_length: split = cut it into max_length blocks, nothing lost (usual for pretraining); "
        "error, drop, left, right as in sft (right: the text's EOS goes, counted)."))
    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate.")
    command: ClassVar[str] = "pt"


class InferConfig(Section):
    """Chat in the terminal, or answer a dataset into JSONL. Run: tunesmith infer --adapters runs/NAME/final"""

    model: str | None = Field(None, description="Model to load (default: the adapter run's base, else the embedded model).")
    adapters: str | None = Field(None, description="Adapter folder of a run (runs/NAME/final); base and template come from it.")
    dataset: list[str] = Field(default_factory=list, description="Answer these prompts instead of chatting.")
    output: str | None = Field(None, description="JSONL file for batch answers (default: <first dataset>.answers.jsonl).")
    batch_size: int = Field(32, ge=1, description="Prompts submitted together in batch mode (they share the running batch).")
    backend: Literal["transformers", "vllm"] = Field("transformers", description=(
        "transformers (always there) or vllm (in its own venv: scripts/vllm-env.sh)."))
    generation: GenerationCfg = Field(default_factory=GenerationCfg, description="Generation settings.")
    system: str | None = Field(None, description="System prompt (default: the one the model was trained with).")
    chat_template_kwargs: dict = Field(default_factory=dict, description=(
        "Extra variables for the chat template, e.g. {enable_thinking: false} for Qwen3; over the ones the run saved."))
    image: list[str] = Field(default_factory=list, description=(
        "Images (files) for a vision model's chat: they go with the first message, in order (--image a.png b.png); "
        "batch rows bring their own (image parts, or an `images` column with <image> placeholders)."),
        json_schema_extra={"commas": False})  # a file name may hold a comma
    skip_bad_rows: bool = Field(False, description="Skip rows that fail the data check instead of stopping.")
    encoding: str = Field("utf-8", description="Text encoding of CSV/JSON/JSONL dataset files, e.g. gbk, utf-16 (a utf-8 BOM is read).")
    speculative: str | None = Field(None, description=SPECULATIVE_HELP)
    dtype: Dtype = Field("auto", description="auto = bfloat16 on GPUs that support it, else float32.")
    device: Device = Field("auto", description="auto = cuda, then mps, then cpu.")
    command: ClassVar[str] = "infer"
    _speculative = field_validator("speculative")(check_speculative)
    shortcuts: ClassVar[dict[str, str]] = GENERATION_SHORTCUTS  # --max-tokens, --temperature, ...


class DeployConfig(Section):
    """Serve models and adapters over an OpenAI-compatible HTTP API. Run: tunesmith deploy --adapters runs/NAME/final"""

    model: str | None = Field(None, description="Base model (default: the adapter runs' base, else the embedded model).")
    adapters: list[str] = Field(default_factory=list, description=(
        "Adapters to serve, picked by the request's model: NAME=PATH, or PATH (named after its run folder)."))
    encoders: list[str] = Field(default_factory=list, description=(
        "Embedding, reranker and classifier models served beside the chat models (/v1/embeddings, /v1/rerank, "
        "/v1/score, /v1/classify), picked by the request's model: NAME=PATH, or PATH (named after its run folder); "
        "PATH is a run's final/, a sentence-transformers folder or all-minilm-l6-v2. Without --model and --adapters "
        "the server loads no chat model."))
    backend: Literal["transformers", "vllm"] = Field("transformers", description=(
        "transformers (always there) or vllm (in its own venv: scripts/vllm-env.sh)."))
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 = every interface).")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    api_key: str | None = Field(None, description=(
        "Require `Authorization: Bearer KEY` on every path but /health and /metrics (default: open)."))
    metrics_require_key: bool = Field(False, description="With --api-key, /metrics needs the key too (default: open).")
    allowed_origins: list[str] = Field(default_factory=list, description=(
        "Web pages (origins, e.g. https://app.example.com, or *) whose scripts may call the API from a browser "
        "(CORS, as vLLM's --allowed-origins; preflights answered, any method and header). Default: none, so a page "
        "on another site cannot use the server."))
    keys: str | None = Field(None, description=(
        "Scoped API keys file (YAML): per key the models it may call, requests and tokens per minute, expiry; "
        "401/403/429 answers, usage per key in /metrics (see tunesmith/config/serving.py)."))
    model_versions: str | None = Field(None, description=(
        "Models with versions and a traffic split, YAML (also --model-config): prd: {versions: {v1: runs/a/final, "
        "v2: runs/b/final}, traffic: {v1: 90, v2: 10}, sticky_by: user}; versions of one base share its weights."))
    admin_key: str | None = Field(None, description=(
        "Opens the admin API (/admin: load and unload versions and adapters, change the traffic split, roll back) to "
        "this key only; user keys get 403 there (default: no admin API)."))
    guardrails: list[str] = Field(default_factory=list, description=(
        "Output policies per model, NAME=policy.yaml: deny-lists, a JSON schema, a classifier hook; a violation "
        "answers the policy's refusal or a 4xx (see tunesmith/config/serving.py)."))
    served_model_name: str | None = Field(None, description=(
        "Name --model is served under (default: its folder's name); without --model, the first adapter's (an adapter "
        "named NAME=PATH keeps NAME)."))
    max_concurrent: int = Field(64, ge=1, description="Requests generating at once; more are answered 429 with Retry-After.")
    max_prompt_tokens: int | None = Field(None, ge=1, description="Reject longer prompts with 400 (default: no limit).")
    max_tokens_limit: int = Field(4096, ge=1, description="Largest max_tokens a request may ask for.")
    max_body_bytes: int = Field(2_000_000, ge=1, description="Largest request body; larger ones are answered 413.")
    # images in chat requests (vision models; serve/images.py): data: URIs always, local files and URLs when allowed
    image_root: str | None = Field(None, description=(
        "Folder that image_url parts may name local files in (file:///abs/path or a path relative to it); files "
        "outside it, and every local path without it, are refused."))
    allow_remote_images: bool = Field(False, description=(
        "Let image_url parts name http(s) URLs that the server downloads (off: a server must not fetch arbitrary URLs "
        "for its callers); hosts at private, loopback or link-local addresses stay refused."))
    remote_image_hosts: list[str] = Field(default_factory=list, description=(
        "With --allow-remote-images: hosts allowed even at private or loopback addresses (an intranet image store)."))
    image_max_bytes: int = Field(10_000_000, ge=1, description=(
        "Largest image a request may bring, as a data: URI, a local file or a download (data: URIs are bounded by "
        "--max-body-bytes too)."))
    image_timeout: float = Field(10.0, gt=0, description="Longest a remote image download may take, in seconds.")
    max_images: int = Field(8, ge=1, description="Most images one request may bring; more are answered 400.")
    generation: GenerationCfg = Field(default_factory=GenerationCfg, description="Defaults for what a request leaves out.")
    system: str | None = Field(None, description="System prompt (default: the one the model was trained with).")
    chat_template_kwargs: dict = Field(default_factory=dict, description=(
        "Extra variables for the chat template, e.g. {enable_thinking: false} for Qwen3; over the ones the run saved, "
        "and under a request's own chat_template_kwargs."))
    speculative: str | None = Field(None, description=SPECULATIVE_HELP)
    stream_interval: int = Field(1, ge=1, description=(
        "Tokens per streamed chunk: a running answer goes out with its first token, then every N tokens and at its "
        "end, the same text in fewer chunks (as SGLang's --stream-interval); many streams then leave the batch more "
        "CPU. 1 = every token."))
    admit_window_ms: float | None = Field(None, ge=0, le=1000, description=(
        "Requests arriving while the batch decodes wait up to this long to join it together, so a burst of arrivals "
        "(each stream's next request, spread by HTTP) enters the batch at once instead of one by one. A request "
        "arriving at an idle batch joins at once. 0 = each joins as it comes. Unset: 4 on a CUDA GPU (+6.5 % tokens/s "
        "at 64 streams, docs/benchmarks.md), 0 elsewhere."))
    kernels: Kernels = Field("auto", description=KERNELS_HELP + " A decode step is a chain of tiny kernels: "
                             "fewer of them serve faster (docs/benchmarks.md).")
    engine_process: bool | None = Field(None, description=(
        "Run the engine (models, batching loop, detokenizing) in its own process beside the HTTP server, as vLLM "
        "splits its API server from its engine core: at many streams the two then stop taking turns on one Python "
        "interpreter. Unset: on with the transformers backend on a CUDA GPU, off elsewhere."))
    dtype: Dtype = Field("auto", description="auto = bfloat16 on GPUs that support it, else float32.")
    device: Device = Field("auto", description="auto = cuda, then mps, then cpu.")
    command: ClassVar[str] = "deploy"
    _speculative = field_validator("speculative")(check_speculative)
    # --max-tokens, --temperature, ...; --model-config: the name the serving docs use for --model-versions
    shortcuts: ClassVar[dict[str, str]] = {**GENERATION_SHORTCUTS, "model_config": "model_versions"}

    @model_validator(mode="after")
    def _check_transformers_only(self) -> "DeployConfig":
        if self.stream_interval > 1 and self.backend != "transformers":
            raise ValueError("stream_interval: chunks the transformers engine's streams; the vllm backend streams "
                             "every step its engine makes (leave it at 1 with --backend vllm)")
        if self.admit_window_ms and self.backend != "transformers":
            raise ValueError("admit_window_ms: paces joins to the transformers engine's batch; vllm schedules its "
                             "own (leave it at 0 with --backend vllm)")
        if self.kernels != "auto" and self.backend != "transformers":
            raise ValueError("kernels: picks the transformers engine's layers; vllm runs its own kernels (leave it "
                             "at auto with --backend vllm)")
        if self.engine_process and self.backend != "transformers":
            raise ValueError("engine_process: the vllm backend runs its engine core in its own process already "
                             "(leave engine_process unset with --backend vllm)")
        return self


class DataCheckConfig(Section):
    """Validate datasets and summarise them. Run: tunesmith data check FILE [--model M]"""

    action: Literal["check"] = Field("check", description="What to do with the data (check).")
    dataset: list[str] = Field(..., min_length=1, description="Files, folders, registry names or hub ids.")
    model: str | None = Field(None, description="Tokenize with this model for token length stats.")
    max_length: int | None = Field(None, description="Report rows longer than this many tokens (needs --model).")
    kind: Literal["sft", "pt", "prompts", "preference", "kto", "embedding", "reranker", "classification"] | None = Field(
        None, description="What the data is for: sft, pt (raw text), prompts (for infer), preference (for rlhf), "
                          "kto (prompt/completion/label rows, or pairs), embedding (query/positive/negatives), "
                          "reranker (query/document/label), classification (text/label). Default: the kind most "
                          "rows read as, said in the report.")
    encoding: str = Field("utf-8", description="Text encoding of CSV/JSON/JSONL dataset files, e.g. gbk, utf-16 (a utf-8 BOM is read).")
    command: ClassVar[str] = "data"
    positional: ClassVar[tuple[str, ...]] = ("action", "dataset")

    @model_validator(mode="after")
    def _lengths_need_a_tokenizer(self) -> "DataCheckConfig":
        # without a model no row is measured: every row would pass a length check it never had
        if self.max_length is not None and not self.model:
            raise ValueError(f"max_length: rows are measured in the tokens of a model; add --model (e.g. --model "
                             f"{DEFAULT_MODEL})")
        return self


class DownloadConfig(Section):
    """Fetch a model or dataset from the Hugging Face hub into its cache. Run: tunesmith download Qwen/Qwen2.5-0.5B-Instruct"""

    repo: str = Field(..., description="Hub id (org/name) or a registry name.")
    kind: Literal["model", "dataset"] = Field("model", description="What the id names.")
    hub: Literal["huggingface", "modelscope"] = Field("huggingface", description="Where to fetch from (modelscope needs its package).")
    command: ClassVar[str] = "download"
    positional: ClassVar[tuple[str, ...]] = ("repo",)

    @field_validator("repo")
    @classmethod
    def _a_hub_id(cls, repo: str) -> str:
        return check_hub_id(repo)


# The hub's rule for repository ids (huggingface_hub.utils.validate_repo_id; ModelScope's ids follow it): NAME or
# ORG/NAME, each part letters, digits, '-', '_' and '.', not starting or ending with '-' or '.', at most 96 characters.
# Checked before any request, so a typo is named at once instead of surfacing as a network or cache error.
HUB_ID_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
HUB_ID = re.compile(rf"(?:{HUB_ID_PART}/)?{HUB_ID_PART}")


def check_hub_id(repo: str) -> str:
    if not HUB_ID.fullmatch(repo) or "--" in repo or ".." in repo or repo.endswith(".git"):
        raise ValueError("not a valid hub id: expected ORG/NAME or NAME, each part letters, digits, '-', '_' or '.' "
                         "(not first or last, no '--' or '..'), at most 96 characters, e.g. "
                         "Qwen/Qwen2.5-0.5B-Instruct, or a registry name from `tunesmith models`")
    return repo
