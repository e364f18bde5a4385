"""Gradient checkpointing sized by the memory plan: pure functions of a ModelShape and a Setup (train/preflight.py
calls them with the config and the hardware it found).

    every = checkpoint_every_that_fits(shape, setup, budget_bytes)   # None: no checkpointing needed
    offload = offload_fits(shape, setup, budget_bytes)     # every layer is not enough: offload their inputs too
    setup = training_setup(cfg, "cuda", "bfloat16", varlen=True)   # the estimator's Setup for a training config

Why only as few layers as fit: checkpointing recomputes a layer's forward in backward. For full fine-tuning that is
2N of 8N FLOPs per token (+33 %); for LoRA, whose backward skips the frozen weights' gradients, 2N of 6N (+50 %).
Checkpointing every k-th layer (transformers' `every_n_layers`) pays that only on 1/k of the layers.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from tunesmith.plan.estimate import Setup, estimate_training
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


def offload_fits(shape: ModelShape, s: Setup, budget_bytes: float) -> bool:
    """True when checkpointing every layer does not fit but offloading their inputs to host memory does (one GPU per
    process, no ZeRO/FSDP: they shard and offload by their own means)."""
    if s.device != "cuda" or s.zero_stage or s.fsdp:
        return False
    if estimate_training(shape, replace(s, checkpointing=True)).total <= budget_bytes:
        return False
    return estimate_training(shape, replace(s, checkpointing=True, activation_offload=True)).total <= budget_bytes


def training_setup(cfg: Any, device: str, dtype: str, varlen: bool, liger: bool = False) -> Setup:
    """The estimator's Setup for exactly this training config. `varlen`: packed batches run the varlen flash kernel
    (no mask); `liger`: liger's layers replace the model's own (they keep less for backward)."""
    targets = cfg.lora.targets if isinstance(cfg.lora.targets, str) else tuple(cfg.lora.targets)
    packing = bool(getattr(cfg, "packing", False))
    rank = cfg.galore.rank if cfg.tuner == "galore" else cfg.lora.rank  # GaLore's projection rank
    trained_layers = cfg.lisa.layers if cfg.tuner == "lisa" else cfg.freeze.trainable_layers
    private = getattr(getattr(cfg, "dp", None), "epsilon", None) is not None
    reft: dict[str, int] = {}
    if cfg.tuner == "reft":
        rank, reft = cfg.reft.rank, reft_counts(cfg.reft)
    return Setup(method=cfg.tuner, dtype=dtype, lora_rank=rank, trained_layers=trained_layers, private=private, **reft,
                 lora_targets=targets, lora_dropout=cfg.lora.dropout, lora_experts=cfg.lora.experts, seq=cfg.max_length,
                 micro_batch=cfg.batch_size, grad_accum=cfg.grad_accum, checkpointing=bool(cfg.gradient_checkpointing),
                 activation_offload=cfg.gradient_checkpointing == "offload", packing=packing,
                 attn="flash" if packing and varlen else "sdpa", device=device,
                 kernels="liger" if liger else "none")


def reft_counts(reft: Any) -> dict[str, int]:
    """Setup's reft_layers and reft_groups for a reft section (config/sections.py ReftCfg), as models/reft.py places
    its interventions: one per chosen layer and position group (the first and last positions unshared: two)."""
    from tunesmith.config.sections import parse_reft_positions

    counts = parse_reft_positions(reft.positions)
    return {"reft_layers": 0 if reft.layers == "all" else len(set(reft.layers)),
            "reft_groups": 2 if counts and all(counts) and not reft.share_weights else 1}
