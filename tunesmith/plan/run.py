"""`tunesmith plan`: probe the machine, read the model's shape, estimate, recommend, print, return the plan.

    from tunesmith.config.plan import PlanConfig
    from tunesmith.plan.run import plan
    result = plan(PlanConfig(model="qwen2.5-7b-instruct", gpu_memory=24))   # result["fits"], result["recommended"]
"""

from __future__ import annotations

from typing import Any

from tunesmith.config.plan import PlanConfig
from tunesmith.errors import ConfigError
from tunesmith.plan.estimate import GIB, Setup, estimate_inference, estimate_training
from tunesmith.plan.hardware import Hardware, probe
from tunesmith.plan.model_shape import ModelShape, load_shape
from tunesmith.plan.recommend import FIT, recommend
from tunesmith.plan.report import estimate_dict, print_plan, settings_dict
from tunesmith.plan.speed import reft_counts

SFT_METHODS = ("full", "lora", "qlora", "dora", "galore", "lisa", "freeze", "longlora", "reft")  # with a command line


def plan(cfg: PlanConfig, hardware: Hardware | None = None) -> dict[str, Any]:
    """The api entry. `hardware` replaces the probe (tests, or planning for another machine)."""
    hw = hardware or probe()
    if cfg.task != "causal-lm":  # embedding, reranker, classification: their own step (plan/encoders.py)
        from tunesmith.plan.encoders import plan_encoder

        return plan_encoder(cfg, hw)
    shape = load_shape(cfg.model, cfg.image_size)
    targets = cfg.lora_targets if isinstance(cfg.lora_targets, str) else tuple(cfg.lora_targets)
    try:
        shape.lora_modules(targets)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    world = cfg.world_size or cfg.nproc_per_node * cfg.nnodes  # as `tunesmith sft` would run: one process by default
    shards = cfg.nproc_per_node if cfg.fsdp == "hybrid-shard" else world
    tp = cfg.tensor_parallel  # its ranks share each batch; the ones beyond it shard with FSDP2 (transformers' own)
    shards = shards // tp
    device = "cuda" if cfg.gpu_memory or hw.gpus else hw.device
    memory = cfg.gpu_memory or hw.memory_gib()
    source = ("--gpu-memory" if cfg.gpu_memory else f"free memory of {hw.gpus[0].name}" if hw.gpus
              else "3/4 of RAM, Apple MPS" if hw.mps else "available RAM, no GPU found")
    dtype = cfg.dtype
    if dtype == "auto":  # models.load.pick_dtype: bf16 where the GPU has it; float32 on CPU, MPS and older GPUs
        dtype = "bfloat16" if cfg.gpu_memory or (hw.gpus and all(g.bf16 for g in hw.gpus)) else "float32"
    base = Setup(dtype=dtype, optimizer=cfg.optimizer, lora_rank=cfg.lora_rank, lora_targets=targets,
                 seq=-(-cfg.max_length // cfg.sequence_parallel), micro_batch=cfg.batch_size, grad_accum=cfg.grad_accum,
                 attn=cfg.attn, packing=cfg.packing, zero_stage=cfg.zero_stage, world_size=shards, tensor_parallel=tp,
                 fsdp=bool(cfg.fsdp) or (tp > 1 and shards > 1),
                 offload=cfg.offload, activation_offload=cfg.gradient_checkpointing == "offload",
                 trained_layers=cfg.trained_layers, private=cfg.dp, lora_experts=cfg.lora_experts,
                 device=device, images=cfg.images_per_sample if shape.vision is not None else 0,
                 **reft_counts(cfg.reft))
    result: dict[str, Any] = {
        "model": {"name": cfg.model, "model_type": shape.model_type, "params": shape.params(), "layers": shape.layers,
                  "hidden": shape.hidden, "vocab": shape.vocab, "params_by_part": shape.breakdown()},
        "hardware": hw.as_dict(), "memory_gib": round(memory, 2), "memory_source": source, "world_size": world,
        "mode": "inference" if cfg.inference else "training", "notes": list(hw.problems),
    }
    if shape.source.startswith("built-in"):
        result["notes"].append(f"model shape: {shape.source}")
    if shape.vision is not None:
        _vision(cfg, shape, result)
    if cfg.inference:
        _inference(cfg, shape, base, memory, result)
    else:
        _training(cfg, shape, base, memory, hw, result)
    print_plan(result, as_json=cfg.json)
    return result


def _training(cfg: PlanConfig, shape: ModelShape, base: Setup, memory: float, hw: Hardware, result: dict) -> None:
    notes = result["notes"]
    methods = ["full"] if cfg.tensor_parallel > 1 else None if cfg.tuner == "auto" else [cfg.tuner]
    ckpt = None if cfg.gradient_checkpointing == "auto" else bool(cfg.gradient_checkpointing)
    target = cfg.global_batch or cfg.batch_size * cfg.grad_accum * base.world_size
    max_micro = cfg.batch_size
    if base.device == "mps":
        max_micro = min(max_micro, 2)
        notes.append("Apple MPS: micro-batch capped at 2 (shared memory; larger batches swap)")
    if methods and ckpt is not None:  # every choice made by the user: check exactly that
        asked = Setup(**{**base.__dict__, "method": cfg.tuner, "checkpointing": ckpt})
        est = estimate_training(shape, asked)
        fits = est.total <= FIT * memory * GIB
        result["asked"] = {"settings": settings_dict(asked), "fits": fits, "estimate": estimate_dict(est)}
    choice = recommend(shape, base, memory, target, max_micro, methods=methods, checkpointing=ckpt,
                       host_ram_gib=hw.ram_gib or None)
    result["recommended"] = {"settings": settings_dict(choice.setup, choice.grad_accum), "fits": choice.fits,
                             "estimate": estimate_dict(choice.estimate), "tried": choice.tried}
    result["fits"] = choice.fits
    asked_fits = result.get("asked", {}).get("fits", True)
    result["message"] = ("fits: " if choice.fits else "does not fit: ") + choice.message
    if not asked_fits:
        result["message"] = (f"your settings need {result['asked']['estimate']['total_gib']:.1f} GiB and do not fit "
                             f"in {memory:.1f} GiB; " + result["message"])
    notes.extend(choice.estimate.notes)
    notes.append("logits: TRL's chunked LM head is assumed (tunesmith sft); a loop with the model's own loss holds "
                 f"fp32 logits: +{12 * choice.setup.micro_batch * cfg.max_length * shape.vocab / GIB:.1f} GiB")
    if base.device == "cpu" and shape.params() > 600e6:
        notes.append("no GPU: a model this size trains for days on CPU; the embedded smollm2-135m-instruct takes "
                     "minutes (tunesmith sft trains in float32 on CPU)")
    if shape.model_type == "gemma2" and cfg.attn != "eager":
        notes.append("Gemma 2 trains with eager attention (logit soft-capping); plan with --attn eager")
    if len(hw.gpus) > 1 and result["world_size"] == 1:
        notes.append(f"{len(hw.gpus)} GPUs found; this plans one process, as `tunesmith sft` runs by default: plan "
                     f"--nproc-per-node {len(hw.gpus)} (with --deepspeed or --fsdp to shard) to use them all")
    s = choice.setup
    if choice.fits and s.method in SFT_METHODS:
        result["command"] = (f"tunesmith sft --model {cfg.model} --tuner {s.method} --max-length {cfg.max_length} "
                             f"--batch-size {s.micro_batch} --grad-accum {choice.grad_accum}"
                             + (" --gradient-checkpointing" if s.checkpointing else "")
                             + (" offload" if s.checkpointing and s.activation_offload else "")
                             + _method_flags(s, cfg)
                             + (" --packing" if s.packing else "") + _layout_flags(cfg, s) + " --dataset DATA")


def _method_flags(s: Setup, cfg: PlanConfig) -> str:
    if s.method in ("lora", "qlora", "dora", "longlora"):
        return f" --lora.rank {s.lora_rank}" + (" --lora.experts" if s.lora_experts else "")
    if s.method == "galore":
        return f" --galore.rank {s.lora_rank}"
    if s.method == "lisa":
        return f" --lisa.layers {s.trained_layers}"
    if s.method == "freeze":
        return f" --freeze.trainable-layers {s.trained_layers}"
    if s.method == "reft":  # and where the interventions go, as given (the estimate counted them so)
        given = {k: getattr(cfg.reft, k) for k in ("layers", "positions", "share_weights") if k in cfg.reft.model_fields_set}
        return f" --reft.rank {s.lora_rank}" + "".join(
            f" --reft.{k.replace('_', '-')} {','.join(map(str, v)) if isinstance(v, list) else str(v).lower()}"
            for k, v in given.items())
    return ""


def _layout_flags(cfg: PlanConfig, s: Setup) -> str:
    """The flags that run the planned layout: processes, the sharding engine, sequence parallelism."""
    flags = f" --nproc-per-node {cfg.nproc_per_node}" if cfg.nproc_per_node > 1 else ""
    flags += f" --nnodes {cfg.nnodes}" if cfg.nnodes > 1 else ""
    if s.zero_stage:
        flags += f" --deepspeed {cfg.deepspeed if cfg.deepspeed and not cfg.deepspeed.startswith('zero') else f'zero{s.zero_stage}'}"
        flags += "-offload" if s.offload and s.zero_stage in (2, 3) and not (cfg.deepspeed or "").endswith(".json") else ""
    elif s.tensor_parallel > 1:
        flags += f" --tensor-parallel {s.tensor_parallel}"
    elif s.fsdp:
        flags += f" --fsdp {cfg.fsdp if isinstance(cfg.fsdp, str) else 'full-shard'}" + (" --fsdp-offload" if s.offload else "")
    return flags + (f" --sequence-parallel {cfg.sequence_parallel}" if cfg.sequence_parallel > 1 else "")


def _vision(cfg: PlanConfig, shape: ModelShape, result: dict) -> None:
    """A vision-language model: its tower's parameters (in params), and the image tokens a sample spends."""
    tower, length = shape.vision, cfg.context if cfg.inference else cfg.max_length
    tokens = tower.tokens_per_image * cfg.images_per_sample
    result["model"]["vision"] = {"params": tower.params, "tokens_per_image": tower.tokens_per_image,
                                 "image_size": tower.image_size, "images_per_sample": cfg.images_per_sample,
                                 "image_tokens_per_sample": tokens}
    result["notes"].append(f"vision tower + aligner: {tower.params / 1e6:.1f}M parameters; {cfg.images_per_sample} "
                           f"picture(s) of {tower.image_size}px per sample = {tokens} image tokens of the {length}")
    if tokens >= length:
        result["notes"].append(f"the image tokens ({tokens}) fill the whole sequence ({length}): raise "
                               f"{'--context' if cfg.inference else '--max-length'} or lower --image-size")


def _inference(cfg: PlanConfig, shape: ModelShape, base: Setup, memory: float, result: dict) -> None:
    method = "qlora" if cfg.tuner == "qlora" else "full"  # serving: 4-bit weights for qlora, else `dtype` weights
    setup = Setup(**{**base.__dict__, "method": method})
    est = estimate_inference(shape, setup, cfg.context)
    fits = est.total <= FIT * memory * GIB
    result["recommended"] = {"settings": {**settings_dict(setup), "context": cfg.context, "weights": method},
                             "fits": fits, "estimate": estimate_dict(est)}
    result["fits"] = fits
    kv = est.parts["kv_cache"] / GIB
    verdict = "fits" if fits else "does not fit"
    result["message"] = (f"{verdict}: serving {cfg.batch_size} sequence(s) of {cfg.context} tokens needs "
                         f"{est.total / GIB:.1f} of {memory:.1f} GiB (KV cache {kv:.2f} GiB)")
    result["notes"].append("prefill in one pass, as transformers generates; servers with chunked prefill (vLLM) "
                           "need less activation memory")
    if not fits and method != "qlora":
        four_bit = estimate_inference(shape, Setup(**{**setup.__dict__, "method": "qlora"}), cfg.context)
        result["message"] += f"; with 4-bit weights (--tuner qlora) it needs {four_bit.total / GIB:.1f} GiB"
