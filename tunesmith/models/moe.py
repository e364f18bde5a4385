"""Mixture-of-experts layers as LoRA sees them (transformers 5 keeps each layer's experts in fused 3D weights).

    moe.routers(model)          # names of the router modules (Linear layers that score the experts)
    moe.expert_weights(model)   # names of the fused expert weights (experts.gate_up_proj, experts.down_proj)
    moe.lora_extras(model, experts=False, train_router=False)   # extra LoraConfig arguments

Defaults: the routers stay frozen (peft's "all-linear" would otherwise put adapters on them: they are Linear layers)
and the experts get no adapters (the attention, shared experts and dense layers do). `experts=True` adds adapters
on every expert's weights through peft's target_parameters.
"""

from __future__ import annotations

import re
from typing import Any

ROUTER_NAMES = ("gate", "router", "shared_expert_gate")  # mlp.gate (Qwen, Mixtral, OLMoE, DeepSeek, GLM), router (gpt-oss, Llama 4)


def routers(model: Any) -> list[str]:
    """Names of the Linear modules that route tokens to experts, in a model that has experts."""
    if not expert_weights(model):
        return []
    names = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ROUTER_NAMES and hasattr(module, "weight"):
            names.append(name)
    return names


def expert_weights(model: Any) -> list[str]:
    """Names of fused expert parameters (3D: experts x out x in)."""
    return [name for name, p in model.named_parameters()
            if ".experts." in name and name.rsplit(".", 1)[-1] in ("gate_up_proj", "down_proj") and p.dim() == 3]


def lora_extras(model: Any, targets: Any = "all-linear", experts: bool = False, train_router: bool = False) -> dict[str, Any]:
    """Extra LoraConfig arguments for a model with experts ({} for a dense one). "all-linear" is resolved here to the
    Linear layers' names less the routers': peft's own resolution puts adapters on routers in transformers 5's
    MoE layers even when told to exclude them (peft 0.21.2, measured in tests/models/test_families.py)."""
    import torch

    found = expert_weights(model)
    if not found:
        return {}
    extra: dict[str, Any] = {}
    if targets == "all-linear":
        # Full names, as one regex: a short name such as down_proj would also reach the experts' fused down_proj
        # (peft matches parameter names too), and the experts are targeted only when asked.
        keep = set() if train_router else set(routers(model))
        out = model.get_output_embeddings()
        names = [name for name, module in model.named_modules()
                 if isinstance(module, torch.nn.Linear) and module is not out and name not in keep]
        if train_router:
            names += routers(model)
        extra["target_modules"] = "^(" + "|".join(re.escape(n) for n in sorted(set(names))) + ")$"
    if experts:
        extra["target_parameters"] = sorted({".".join(name.rsplit(".", 2)[-2:]) for name in found})
    return extra
