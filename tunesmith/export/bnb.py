"""bitsandbytes exports: a folder whose config.json carries the quantization_config, so a plain
`AutoModelForCausalLM.from_pretrained(folder)` reloads it quantized (bitsandbytes installed; CPU or CUDA).

bnb4: NF4 with double quantization (the QLoRA recipe); bnb8: LLM.int8 (outlier threshold 6.0, bitsandbytes' default).
The layers bitsandbytes leaves alone (embeddings, norms, lm_head) keep --dtype.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tunesmith.errors import HardwareError


def quantization_config(quant: str, dtype: Any) -> Any:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise HardwareError(f"quant: {quant} needs bitsandbytes: pip install 'tunesmith[qlora]'") from None
    from transformers import BitsAndBytesConfig

    if quant == "bnb4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def write(model: Any, template: Any, staging: Path, quant: str, dtype: Any, device: str) -> None:
    """Quantize `model` (any dtype) into `staging`. transformers quantizes while loading, so the model goes through a
    plain folder first (removed afterwards)."""
    from transformers import AutoModelForCausalLM

    if device not in ("cpu", "cuda"):
        raise HardwareError(f"quant: {quant}: bitsandbytes runs on CUDA or the CPU, not {device}; pass --device cpu")
    config = quantization_config(quant, dtype)
    plain = staging / ".plain"
    model.to(dtype).save_pretrained(plain, safe_serialization=True)
    quantized = AutoModelForCausalLM.from_pretrained(plain, quantization_config=config, dtype=dtype,
                                                     device_map={"": device})
    quantized.save_pretrained(staging, safe_serialization=True)
    shutil.rmtree(plain)
    template.save(staging)


def load(folder: Path, device: str) -> Any:
    import warnings

    from transformers import AutoModelForCausalLM

    # bitsandbytes says so on every int8 matmul of float32 inputs (the CPU's); once is enough
    warnings.filterwarnings("once", message="MatMul8bitLt: inputs will be cast")
    return AutoModelForCausalLM.from_pretrained(folder, device_map={"": device})
