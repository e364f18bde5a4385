"""Before a training run loads weights: every decision and check, the same for every training command (sft, pt and
each rlhf method). A recipe calls it after its data stage, so bad rows still stop a run first:

    template, base_folder = load_template(cfg)            # the renderer; a continued run's differences named
    train_ds = ...                                         # the recipe's data stage: bad rows stop the run here
    plan = preflight(cfg, base_folder, rows=len(train_ds))  # decides, checks, prints; raises on a refusal
    model, device, dtype = load_trainable(cfg, base_folder)
    run.save_config(..., **plan.recorded(), **trainable_report(cfg, model))

Decides (and config.yaml records): packing left unset (on where the varlen kernel runs); gradient checkpointing left
unset (on a CUDA GPU only when the memory plan says the run would not fit without it, and then on as few layers as
fit). Checks: that rows are left to train on; the memory plan for exactly these settings against this machine
(a warning, or a refusal with --strict-memory); a continued run (--adapters) whose template, system prompt or
max_length differ from what that run recorded. Prints what a user checks first: the effective batch, the speed
choices, the memory plan and, once the weights are loaded, the trainable and frozen parameter counts (a LoRA run in
which base weights would train is refused).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tunesmith.config.commands import LORA_TUNERS
from tunesmith.errors import ConfigError, DataError, HardwareError
from tunesmith.models import load as models
from tunesmith.models.kernels import liger_applies
from tunesmith.plan import hardware
from tunesmith.plan.estimate import GIB, Estimate, estimate_training
from tunesmith.plan.methods import Alignment, method_extra_bytes, method_setup
from tunesmith.plan.model_shape import ModelShape, load_shape
from tunesmith.plan.speed import (AUTO_SHARE, checkpoint_every_that_fits, checkpointed_layers, offload_fits,
                                  partial_checkpointing_bytes, training_setup)
from tunesmith.train import launch, speed

log = logging.getLogger("tunesmith")
# Names of the parameters an adapter run trains: peft's LoRA/DoRA weights and whole modules it saves (a reward
# model's score head), LoReFT's interventions (models/reft.py).
ADAPTER_PARAMS = ("lora_", "modules_to_save", "reft.layers.")


@dataclass
class Preflight:
    device: str
    dtype: Any
    hardware: hardware.Hardware
    processes: int = 1
    needed_gib: float | None = None  # the memory plan's peak; None when the model's shape could not be read
    have_gib: float = 0.0
    choices: dict[str, Any] = field(default_factory=dict)
    layout: dict[str, Any] = field(default_factory=dict)  # processes and the engine that spreads the run over them
    longest: int | None = None  # the longest tokenized sample, where the command knows it before weights load

    def recorded(self) -> dict[str, Any]:
        """What config.yaml keeps of the pre-flight: the device, the dtype, the plan and the speed choices."""
        plan = {"needed_gib": round(self.needed_gib, 2) if self.needed_gib is not None else None,
                "available_gib": round(self.have_gib, 2)}
        return {"device": self.device, "dtype": str(self.dtype), "memory_plan": plan, "choices": self.choices,
                "layout": self.layout}


def load_template(cfg: Any) -> tuple[Any, Path]:
    """The run's Template and the base model's folder, before any weights load, so every data problem, token lengths
    included, is reported before the expensive part. Continuing a run (--adapters): its recorded base (unless --model
    says otherwise), its tokenizer and chat template, and what differs from it said now (check_continuation)."""
    from transformers import set_seed

    from tunesmith.models.runs import read_run_output
    from tunesmith.templates import Template
    from tunesmith.train.continued import start_from

    start_from(cfg)  # --continue-from runs/A: A's final adapter (as --adapters) or full model

    if getattr(cfg, "seed", None) is not None:  # `data inspect` renders with the same template and trains nothing
        set_seed(cfg.seed)  # before the adapters are initialised: the same seed gives the same run
    base_name = cfg.model
    if cfg.adapters and "model" not in cfg.model_fields_set:
        base_name = read_run_output(cfg.adapters).base_model
        cfg.model = base_name  # config.yaml names the real base, so a run chained on this one (A -> B -> C) finds it
    folder = models.resolve(base_name)
    template = Template(models.load_tokenizer(Path(cfg.adapters) if cfg.adapters else folder), default_system=cfg.system,
                        chat_template_kwargs=getattr(cfg, "chat_template_kwargs", None))
    check_continuation(cfg, template)
    pinned = template.pin_date()  # a template that prints today's date prints the training day's (saved in final/)
    if pinned and hasattr(cfg, "chat_template_kwargs") and cfg.chat_template_kwargs.get("date_string") != pinned:
        cfg.chat_template_kwargs = {**cfg.chat_template_kwargs, "date_string": pinned}  # config.yaml and the ranks
        log.info("chat template prints today's date: pinned to %s (chat_template_kwargs.date_string)", pinned)
    return template, folder


def preflight(cfg: Any, base_folder: Path, rows: int, longest: int | None = None) -> Preflight:
    """The device, dtype, speed choices and memory plan of a run of `rows` samples. `longest`, the longest sample in
    tokens when the data is tokenized already: unpacked batches pad to their longest sample, not to max_length, so the
    plan (and the checkpointing it picks) measures those instead of max_length tokens a row."""
    if rows == 0:
        raise DataError(f"{', '.join(cfg.dataset)}: no rows left to train on")
    device = models.pick_device(cfg.device)
    dtype = models.pick_dtype(cfg.dtype, device)
    if cfg.tuner == "qlora" and device == "mps":
        raise HardwareError("tuner: qlora needs CUDA or CPU (bitsandbytes has no MPS kernels); use tuner: lora")
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # one GPU per process: weights load onto this rank's
        import torch

        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    plan = Preflight(device, dtype, hardware.probe(), processes=launch.world_size(), longest=longest)
    plan.have_gib = plan.hardware.memory_gib()
    launch.check_engine(cfg, plan.processes)
    engine = (f"deepspeed {cfg.deepspeed}" if cfg.deepspeed else f"fsdp2 {cfg.fsdp}" if cfg.fsdp else
              "ddp" if plan.processes > 1 else "single process")
    if cfg.tensor_parallel > 1:
        if Path(base_folder).is_dir():  # also under an outer launcher (bench/sft.py passes a shape name)
            launch.check_tensor_parallel_model(Path(base_folder), cfg.tensor_parallel)
        dp = plan.processes // cfg.tensor_parallel
        engine = f"tensor parallel {cfg.tensor_parallel}" + (f" x fsdp2 {dp}" if dp > 1 else "")
    plan.layout = {"processes": plan.processes, "nodes": int(os.environ.get("GROUP_WORLD_SIZE", 1)), "engine": engine,
                   "sequence_parallel": cfg.sequence_parallel, "tensor_parallel": cfg.tensor_parallel}
    shape = _shape(base_folder)
    if cfg.tuner == "reft" and cfg.reft.layers != "all" and shape is not None:  # before any weights load
        wrong = sorted(i for i in set(cfg.reft.layers) if not 0 <= i < shape.layers)
        if wrong:
            raise ConfigError(f"reft.layers: {wrong} not among the model's decoder layers 0-{shape.layers - 1}")
    resolve_speed(cfg, plan, shape)
    _check_memory(cfg, plan, shape)
    _print(cfg, plan, rows)
    return plan


# -----------------------------------------------------------------------------
# Speed choices


def resolve_speed(cfg: Any, plan: Preflight | None = None, shape: ModelShape | None = None) -> dict[str, Any]:
    """Fill packing and gradient_checkpointing (+ checkpoint_every) where the config left them unset (None)."""
    if plan is None:  # called on its own (tests, bench/sft.py): probe like preflight does
        device = models.pick_device(cfg.device)
        plan = Preflight(device, models.pick_dtype(cfg.dtype, device), hardware.probe())
        plan.have_gib = plan.hardware.memory_gib()
        shape = _shape(cfg.model)
    speed.resolve_packing(cfg, plan.device, plan.dtype)
    if cfg.gradient_checkpointing is None:
        every, offload = _every_from_plan(cfg, plan, shape) if plan.device == "cuda" else (None, False)
        cfg.gradient_checkpointing = "offload" if offload else every is not None
        if every is not None and cfg.checkpoint_every is None:
            cfg.checkpoint_every = every
    plan.choices |= {"packing": cfg.packing, "gradient_checkpointing": cfg.gradient_checkpointing,
                     "checkpoint_every": cfg.checkpoint_every}
    _fold_accumulation(cfg, plan, shape)
    return plan.choices


def _fold_accumulation(cfg: Any, plan: Preflight, shape: ModelShape | None) -> None:
    """batch_size x grad_accum rows in one pass where the batches carry no padding (packed or padding-free) and the
    memory plan fits them with the checkpointing already chosen (so nothing more is recomputed): the same rows per
    optimizer step and the same loss, since TRL divides by the step's label count either way, in fewer and larger
    kernels. Small micro-batches leave a GPU launch-bound: at Unsloth's L8 setting (QLoRA, 2 rows x GA 4) it idled
    80 % of each step. Not for MoE models (their load-balancing loss is per micro-batch) nor preference methods."""
    if (plan.device != "cuda" or cfg.grad_accum <= 1 or shape is None or shape.experts or shape.vision is not None
            or cfg.command not in ("sft", "pt") or getattr(cfg, "task", "causal-lm") != "causal-lm"
            or not speed.flattens(cfg, plan.device, plan.dtype)):
        return
    rows = cfg.batch_size * cfg.grad_accum
    folded = cfg.model_copy(update={"batch_size": rows, "grad_accum": 1})
    if estimate(folded, plan, shape).total > AUTO_SHARE * plan.have_gib * GIB:
        log.info("gradient accumulation: %d passes of %d rows (%d rows in one pass would not fit the memory plan)",
                 cfg.grad_accum, cfg.batch_size, rows)
        return
    log.info("gradient accumulation folded: %d rows in one pass per step instead of %d x %d (the same rows and loss; "
             "the memory plan fits them)", rows, cfg.grad_accum, cfg.batch_size)
    plan.choices["accumulation"] = f"batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum} -> {rows} x 1"
    cfg.batch_size, cfg.grad_accum = rows, 1


def _every_from_plan(cfg: Any, plan: Preflight, shape: ModelShape | None) -> tuple[int | None, bool]:
    """(checkpoint every N-th layer or None, offload their inputs) from the memory plan."""
    if shape is None:
        log.info("gradient checkpointing: off (no memory plan for this model)")
        return None, False
    setup = method_setup(_setup(cfg, plan, shape), _alignment(cfg))
    extra = sum(method_extra_bytes(shape, setup, _alignment(cfg)).values())
    budget = AUTO_SHARE * plan.have_gib * GIB - extra
    every = checkpoint_every_that_fits(shape, setup, budget)
    offload = every == 1 and offload_fits(shape, setup, budget)
    if every is None:
        log.info("gradient checkpointing: off (the memory plan fits without it)")
    elif offload:
        log.info("gradient checkpointing: every layer, inputs offloaded to CPU memory (without offload the memory "
                 "plan does not fit)")
    else:
        log.info("gradient checkpointing: every %d-th layer (%d of %d layers recompute), from the memory plan", every,
                 checkpointed_layers(shape.layers, every), shape.layers)
    return every, offload


# -----------------------------------------------------------------------------
# Memory


def _check_memory(cfg: Any, plan: Preflight, shape: ModelShape | None) -> None:
    """The plan's estimate for exactly these settings against this machine's memory. Warns when it will not fit;
    refuses with --strict-memory. An architecture the estimator cannot read never blocks a run."""
    if shape is None:
        return
    est = estimate(cfg, plan, shape)
    plan.needed_gib = est.total / GIB
    host = est.host_bytes / GIB  # offloaded states (and ZeRO-3 weights), per process: the node holds all of them
    host_free = plan.hardware.ram_free_gib or plan.hardware.ram_gib
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if plan.device != "cpu" and host and host * ranks_here > host_free:
        advice = (f"memory plan: CPU offload keeps about {host * ranks_here:.0f} GiB in this machine's RAM but "
                  f"{host_free:.0f} GiB is free; the kernel would kill the run. Offload less (--deepspeed zero3 "
                  "without -offload, more GPUs) or use lora.")
        if cfg.strict_memory:
            raise HardwareError(advice + " Refusing to start (--strict-memory).")
        log.warning("%s Starting anyway; pass --strict-memory to refuse.", advice)
    if plan.needed_gib <= plan.have_gib:
        return
    advice = (f"memory plan: this run needs about {plan.needed_gib:.1f} GiB at the peak but {plan.have_gib:.1f} GiB is "
              f"available. See `tunesmith plan --model {cfg.model} --tuner {cfg.tuner} --max-length {cfg.max_length}` "
              "for settings that fit (smaller --batch-size with more --grad-accum, --gradient-checkpointing, qlora).")
    if cfg.strict_memory:
        raise HardwareError(advice + " Refusing to start (--strict-memory).")
    log.warning("%s Starting anyway; pass --strict-memory to refuse.", advice)


def estimate(cfg: Any, plan: Preflight, shape: ModelShape) -> Estimate:
    """The peak of this run: its step (with partial checkpointing when chosen) plus what its method adds."""
    if getattr(cfg, "task", "causal-lm") != "causal-lm":  # an embedding, reranker or classifier: plan/encoders.py
        from tunesmith.plan.encoders import estimate_for_run

        config = json.loads(Path(shape.source).read_text(encoding="utf-8"))
        return estimate_for_run(cfg, config, plan.device, str(plan.dtype).removeprefix("torch."))
    alignment = _alignment(cfg)
    setup = method_setup(_setup(cfg, plan, shape), alignment)
    step = estimate_training(shape, setup)
    every = getattr(cfg, "checkpoint_every", None) or 1
    if setup.checkpointing and every > 1 and step.total:  # the layers that keep their activations add back
        scale = partial_checkpointing_bytes(shape, setup, every) / step.total
        step = Estimate({k: v * scale for k, v in step.parts.items()}, step.phases, step.params, step.trainable,
                        step.host_bytes, step.notes)
    step.parts.update(method_extra_bytes(shape, setup, alignment))
    return step


def _setup(cfg: Any, plan: Preflight, shape: ModelShape) -> Any:
    """The estimator's Setup for this config on this machine, per device: sharded over the processes with DeepSpeed
    or FSDP (hybrid-shard: within a node), each holding max_length / sequence_parallel tokens of a sequence (the
    longest sample's tokens instead where it is known and shorter, and packing is off)."""
    varlen = speed.varlen_runs(plan.device, plan.dtype)
    liger = liger_applies(getattr(cfg, "kernels", "none"), plan.device, shape.model_type)
    setup = training_setup(cfg, plan.device, str(plan.dtype).removeprefix("torch."), varlen, liger)
    shards = int(os.environ.get("LOCAL_WORLD_SIZE", plan.processes)) if cfg.fsdp == "hybrid-shard" else plan.processes
    tp = cfg.tensor_parallel if plan.processes > 1 else 1  # tensor parallel: FSDP2 over the ranks beyond it
    shards //= tp
    return replace(setup, world_size=shards, zero_stage=launch.deepspeed_stage(cfg.deepspeed), tensor_parallel=tp,
                   fsdp=bool(cfg.fsdp) or (tp > 1 and shards > 1),
                   offload="offload" in (cfg.deepspeed or "") or cfg.fsdp_offload,
                   seq=-(-_sequence_length(cfg, plan) // cfg.sequence_parallel))


def _sequence_length(cfg: Any, plan: Preflight) -> int:
    if plan.longest and not cfg.packing:  # packed rows fill max_length whatever the samples' lengths
        return min(cfg.max_length, plan.longest)
    return cfg.max_length


def _alignment(cfg: Any) -> Alignment:
    method = cfg.command if cfg.command != "rlhf" else cfg.method
    if method == "grpo":
        kl = cfg.grpo.kl_coef if cfg.grpo.kl_coef is not None else 0.04 if cfg.grpo.variant == "grpo" else 0.0
        return Alignment(method, reference_copy=not cfg.trains_adapter and kl > 0, rollout_sequences=cfg.batch_size,
                         rollout_length=cfg.max_length)
    if method == "ppo":
        return Alignment(method, rollout_sequences=cfg.batch_size, rollout_length=cfg.max_length)
    return Alignment(method, reference_copy=method in ("dpo", "kto") and not cfg.trains_adapter)


def _shape(model: Any) -> ModelShape | None:
    try:
        return load_shape(str(model))
    except Exception as err:  # noqa: BLE001 - an unknown architecture must not stop training
        log.info("memory plan skipped (%s)", err)
        return None


# -----------------------------------------------------------------------------
# A continued run


def check_continuation(cfg: Any, template: Any) -> None:
    """--adapters continues an earlier run: say where this run differs from what that run recorded. An unset system
    prompt is inherited from it (flags override what a run recorded; they never silently drop it)."""
    if not cfg.adapters:
        return
    folder = Path(cfg.adapters)
    recorded = _recorded_template(folder)
    earlier = _recorded_config(folder)
    if cfg.system is None and recorded.get("default_system"):
        template.default_system = recorded["default_system"]
        log.info("system prompt: the one %s trained with (--system overrides it)", folder)
    elif "default_system" in recorded and recorded["default_system"] != template.default_system:
        log.warning("system prompt: %s trained with %r, this run uses %r; answers will follow this run's",
                    folder, recorded["default_system"], template.default_system)
    if recorded.get("chat_template_kwargs"):  # inherited like the system prompt; this run's own go over them
        template.chat_template_kwargs = {**recorded["chat_template_kwargs"], **template.chat_template_kwargs}
    saved_template = folder / "chat_template.jinja"
    if saved_template.exists() and saved_template.read_text(encoding="utf-8") != template.tokenizer.chat_template:
        log.warning("chat template: differs from the one %s trained with; the prompts it learned will not match", folder)
    if earlier.get("max_length") not in (None, cfg.max_length):
        log.warning("max_length: %s trained with %d, this run uses %d", folder, earlier["max_length"], cfg.max_length)
    follow_adapter(cfg, folder)


# adapter_config.json's names for the lora section's keys
ADAPTER_KEYS = {"rank": "r", "alpha": "lora_alpha", "dropout": "lora_dropout", "rslora": "use_rslora"}


def follow_adapter(cfg: Any, folder: Path) -> None:
    """--adapters trains that adapter further as it is: its rank, alpha, targets and kind are the adapter's. A lora
    setting given that differs is refused by name (it would be ignored while config.yaml claimed it); the rest take
    the adapter's values, so config.yaml and the memory plan describe the adapter that trains."""
    path = folder / "adapter_config.json"
    if not path.exists() or not hasattr(cfg, "lora"):  # a ReFT run, or a command without adapters
        return
    adapter = json.loads(path.read_text(encoding="utf-8"))
    if adapter.get("peft_type") != "LORA":
        return
    kind = "dora" if adapter.get("use_dora") else "lora"
    if "tuner" in cfg.model_fields_set and cfg.tuner in ("lora", "dora") and cfg.tuner != kind:
        raise ConfigError(f"tuner: {cfg.tuner} given, but {folder} is a {kind} adapter, which --adapters trains further "
                          f"as it is: drop --tuner (or train a new {cfg.tuner} adapter without --adapters)")
    given = cfg.lora.model_fields_set if "lora" in cfg.model_fields_set else set()
    targets = adapter.get("target_modules")
    if "targets" in given and isinstance(targets, list) and cfg.lora.targets != "all-linear" \
            and set(cfg.lora.targets) != set(targets):
        raise ConfigError(f"lora.targets: {', '.join(cfg.lora.targets)} given, but the adapter in {folder} sits on "
                          f"{', '.join(sorted(targets))}; --adapters trains it further as it is: drop lora.targets")
    for key, name in ADAPTER_KEYS.items():
        value = adapter.get(name)
        if value is None or getattr(cfg.lora, key) == value:
            continue
        if key in given:
            raise ConfigError(f"lora.{key}: {getattr(cfg.lora, key)} given, but the adapter in {folder} has {name} = "
                              f"{value}; --adapters trains it further as it is: drop lora.{key} (or train a new adapter "
                              "without --adapters)")
        setattr(cfg.lora, key, value)


def _recorded_template(folder: Path) -> dict:
    path = folder / "tunesmith_template.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _recorded_config(folder: Path) -> dict:
    import yaml

    for path in (folder / "config.yaml", folder.parent / "config.yaml"):
        if path.exists():
            return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {}


# -----------------------------------------------------------------------------
# What the user checks first


def _print(cfg: Any, plan: Preflight, rows: int) -> None:
    what = cfg.method if cfg.command == "rlhf" else cfg.command
    adapter = f" rank {cfg.lora.rank}" if cfg.tuner in LORA_TUNERS else ""
    replicas = plan.processes // cfg.sequence_parallel  # ranks that share one sequence count once
    effective = cfg.batch_size * cfg.grad_accum * replicas
    log.info("run: %s, tuner %s%s, %d rows; effective batch %d = %d per step x %d accumulation x %d data-parallel "
             "process(es), %s", what, cfg.tuner, adapter, rows, effective, cfg.batch_size, cfg.grad_accum, replicas,
             plan.layout["engine"])
    ckpt = ("off" if not cfg.gradient_checkpointing else
            f"every {cfg.checkpoint_every}-th layer" if (cfg.checkpoint_every or 1) > 1 else "all layers")
    if cfg.gradient_checkpointing == "offload":
        ckpt += (", their inputs offloaded to pinned CPU memory" if plan.device == "cuda" else
                 f" (offload: nothing to move on {plan.device}, whose activations already live in host memory)")
    log.info("speed: packing %s, gradient checkpointing %s, on %s in %s", "on" if cfg.packing else "off", ckpt,
             plan.device, str(plan.dtype).removeprefix("torch."))
    if plan.needed_gib is not None:
        log.info("memory plan: about %.1f of %.1f GiB at the peak", plan.needed_gib, plan.have_gib)


def trainable_report(cfg: Any, model: Any) -> dict[str, int]:
    """Trainable and frozen parameter counts, printed and returned for config.yaml. An adapter run in which a base
    weight would train is refused: it would silently become a (partial) full fine-tune."""
    trainable, frozen, strays = 0, 0, []
    prefix = getattr(getattr(model, "base_model", None), "prefix", "lora_")  # peft's: lora_, vera_lambda_, oft_...
    adapter_params = (prefix, *ADAPTER_PARAMS)
    for name, param in model.named_parameters():
        count = param.numel() * (2 if type(param).__name__ == "Params4bit" else 1)  # two 4-bit weights per byte
        if param.requires_grad:
            trainable += count
            if cfg.trains_adapter and not any(key in name for key in adapter_params):
                strays.append(name)
        else:
            frozen += count
    if strays:
        raise ConfigError(f"tuner: {cfg.tuner} would also train {len(strays)} base weight(s) ({', '.join(strays[:3])}"
                          f"{', ...' if len(strays) > 3 else ''}); an adapter run trains adapter weights only. "
                          "Use --tuner full to train every weight.")
    if trainable == 0:
        raise ConfigError("nothing to train: every weight is frozen")
    total = trainable + frozen
    log.info("parameters: %s trainable (%.2f %%), %s frozen, %s in all", _count(trainable), 100 * trainable / total,
             _count(frozen), _count(total))
    return {"trainable_params": trainable, "frozen_params": frozen}


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"
