"""liger-kernel's fused layers (RMSNorm, RoPE, SwiGLU) on a loaded model, for training and for serving on CUDA.

    liger_applies(kernels, device, model_type)   # whether `kernels` (auto | liger | none) gives this model liger's layers
    apply_kernels(kernels, model, device)        # patch the layers in place; returns what was applied, for the record

Each fused layer is one Triton kernel where the model's own code launches several: RMSNorm is ~7 elementwise kernels
(square, mean, rsqrt, multiplies, casts), RoPE ~10 per query/key pair, SwiGLU two. Training keeps fewer activations
for backward; decoding, whose steps are chains of tiny kernels, launches ~26 fewer kernels per layer per step.
Not liger's cross-entropy kernels: TRL's SFTTrainer already replaces the LM head with its own chunked one (full
logits are never built) and scores only labelled positions, where liger's projects every position; liger's would
also replace the model's forward, which TRL patches itself.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from tunesmith.errors import HardwareError

log = logging.getLogger("tunesmith")

LIGER_KERNELS = {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False,
                 "fused_linear_cross_entropy": False}


def liger_applies(kernels: str, device: str, model_type: str) -> bool:
    """Whether `kernels` gives this model liger's layers here (the memory plan counts what they keep for backward)."""
    if kernels == "none" or device != "cuda" or importlib.util.find_spec("liger_kernel") is None:
        return False
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except Exception:  # noqa: BLE001 - a liger that does not import is a liger that does not apply
        return False
    return model_type in MODEL_TYPE_TO_APPLY_LIGER_FN


def apply_kernels(kernels: str, model: Any, device: str) -> str:
    """auto: liger's layers where they run (CUDA, liger-kernel installed, a model type it knows), else the model's
    own; liger: the same, refused where it cannot run; none: the model's own."""
    if kernels == "none":
        return "none"
    if device != "cuda" or importlib.util.find_spec("liger_kernel") is None:
        if kernels == "liger":
            raise HardwareError("kernels: liger needs a CUDA GPU and liger-kernel (pip install 'tunesmith[gpu]'); "
                                "use kernels: auto or none")
        return "none"
    try:
        from transformers.integrations.liger import apply_liger_kernel

        model_type = model.config.model_type
        if not liger_applies(kernels, device, model_type):
            return f"none (liger has no kernels for {model_type})"
        classes = _layer_classes(model)
        apply_liger_kernel(model, LIGER_KERNELS)  # unwraps peft; patches the layers in place
        _restore_layer_classes(model, classes)
        # At its first call liger tries its backends for other hardware (CuTe DSL, Ascend) and warns for each one
        # that does not import: expected on a plain CUDA machine, and two alarming lines in every log otherwise.
        logging.getLogger("liger_kernel.backends.registry").setLevel(logging.ERROR)
    except Exception as err:  # noqa: BLE001 - an optional speed-up must not stop a run that works without it
        if kernels == "liger":
            raise
        log.warning("liger kernels not applied (%s: %s); running the model's own layers", type(err).__name__, err)
        return "none"
    return "liger (" + ", ".join(k for k, on in LIGER_KERNELS.items() if on) + ")"


def _modeling_module(model: Any) -> Any:
    import sys

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return sys.modules[type(base).__module__]


def _layer_classes(model: Any) -> dict[str, Any]:
    """The model file's norm and MLP classes, which liger swaps for its own module-wide besides patching the loaded
    layers: every model of that type built later in the process would get liger's layers, `kernels: none` or not."""
    module = _modeling_module(model)
    return {name: value for name, value in vars(module).items()
            if isinstance(value, type) and name.endswith(("RMSNorm", "MLP"))}


def _restore_layer_classes(model: Any, classes: dict[str, Any]) -> None:
    """Put the classes back: the loaded model keeps its patched layers. liger's RoPE stays module-wide (the attention
    calls the file's own function), so a model of the same type loaded later with `kernels: none` rotates with
    liger's kernel; its norms and MLPs are its own."""
    module = _modeling_module(model)
    for name, value in classes.items():
        setattr(module, name, value)

