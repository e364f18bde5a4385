"""Training settings left unset, chosen for this machine before a run starts (api.sft calls `resolve_speed`), so
that runs/NAME/config.yaml records what ran.

    resolve_speed(cfg)     # packing: unset -> on where the varlen kernel runs; gradient_checkpointing: unset -> on
                           # CUDA only when the memory plan says the run would not fit without it, and then on as few
                           # decoder layers as fit (checkpoint_every)

Why only as few layers as fit: checkpointing recomputes a layer's forward in backward. For full fine-tuning that is
2N of 8N FLOPs per token (+33 %); for LoRA, whose backward skips the frozen weights' gradients, 2N of 6N (+50 %).
Checkpointing every k-th layer (transformers' `every_n_layers`) pays that only on 1/k of the layers.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any

from tunesmith.plan.estimate import GIB, Setup, estimate_training
from tunesmith.plan.model_shape import ModelShape

# Share of the free GPU memory the automatic choice may plan for. The estimate already holds allocator slack and the
# CUDA context and was within 2.3 % of max_memory_allocated on an H100 (plan/estimate.py); the rest is margin for what
# it does not model (other processes, evaluation batches). Liger kernels, when applied, use less than it counts.
AUTO_SHARE = 0.90


def checkpointed_layers(layers: int, every: int) -> int:
    """Layers that recompute with `every_n_layers=every` (transformers checkpoints layer i when i % every == 0)."""
    return math.ceil(layers / every)


def partial_checkpointing_bytes(shape: ModelShape, s: Setup, every: int) -> float:
    """Peak bytes with checkpointing on every `every`-th layer: the all-layers estimate plus, for each layer that
    keeps its activations, its share of the difference to no checkpointing at all."""
    full = estimate_training(shape, replace(s, checkpointing=True)).total
    none = estimate_training(shape, replace(s, checkpointing=False)).total
    kept = shape.layers - checkpointed_layers(shape.layers, every)
    return full + max(0.0, none - full) * kept / shape.layers


def checkpoint_every_that_fits(shape: ModelShape, s: Setup, budget_bytes: float) -> int | None:
    """None when the run fits without checkpointing; else the largest `every` (fewest recomputed layers) that fits;
    1 (every layer) when nothing fits, which the pre-flight memory check then reports."""
    if estimate_training(shape, replace(s, checkpointing=False)).total <= budget_bytes:
        return None
    for every in range(shape.layers, 1, -1):
        if partial_checkpointing_bytes(shape, s, every) <= budget_bytes:
            return every
    return 1


def training_setup(cfg: Any, device: str, bf16: bool, varlen: bool, liger: bool = False) -> Setup:
    """The estimator's Setup for exactly this config (also what api.check_memory estimates); `liger`: whether
    train/speed.py will swap in liger's layers (train.speed.liger_applies)."""
    targets = cfg.lora.targets if isinstance(cfg.lora.targets, str) else tuple(cfg.lora.targets)
    packing = bool(getattr(cfg, "packing", False))
    return Setup(method=cfg.tuner, dtype="bfloat16" if bf16 else "float32", lora_rank=cfg.lora.rank,
                 lora_targets=targets, lora_dropout=cfg.lora.dropout, seq=cfg.max_length, micro_batch=cfg.batch_size,
                 grad_accum=cfg.grad_accum, checkpointing=bool(cfg.gradient_checkpointing), packing=packing,
                 attn="flash" if packing and varlen else "sdpa", device=device, kernels="liger" if liger else "none")


def resolve_speed(cfg: Any) -> None:
    """Fill packing and gradient_checkpointing (+ checkpoint_every) where the config left them unset (None)."""
    from tunesmith.models.load import pick_device, pick_dtype
    from tunesmith.train.speed import resolve_packing, varlen_runs

    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    resolve_packing(cfg, device, dtype)
    if cfg.gradient_checkpointing is not None:
        return
    every = _every_from_plan(cfg, varlen_runs(device, dtype)) if device == "cuda" else None
    cfg.gradient_checkpointing = every is not None
    if every is not None and cfg.checkpoint_every is None:
        cfg.checkpoint_every = every


def _every_from_plan(cfg: Any, varlen: bool) -> int | None:
    from tunesmith.plan.hardware import probe
    from tunesmith.plan.model_shape import load_shape
    from tunesmith.train.speed import liger_applies

    log = logging.getLogger("tunesmith")
    try:
        hw = probe()
        shape = load_shape(cfg.model)
        setup = training_setup(cfg, "cuda", all(g.bf16 for g in hw.gpus), varlen,
                               liger_applies(cfg.kernels, "cuda", shape.model_type))
        every = checkpoint_every_that_fits(shape, setup, AUTO_SHARE * hw.memory_gib() * GIB)
    except Exception as err:  # noqa: BLE001 - an architecture the estimator cannot read keeps the plain default
        log.info("gradient checkpointing: off (no memory plan: %s)", err)
        return None
    if every is None:
        log.info("gradient checkpointing: off (the memory plan fits without it)")
    else:
        log.info("gradient checkpointing: every %d-th layer (%d of %d layers recompute), from the memory plan", every,
                 checkpointed_layers(shape.layers, every), shape.layers)
    return every
