"""Two patches of peft's LoRA Linear layers (peft 0.21), applied per model by train/speed.py on the fast path.

1. keep_adapter_inputs_in_compute_dtype (train/speed.py step 5). Upstream: peft's Linear.forward casts its input to
   the adapter weight's dtype (`self._cast_input_dtype(x, lora_A.weight.dtype)`, on when `cast_input_dtype_enabled`);
   with fp32 adapters under bf16 autocast that is a bf16 -> fp32 copy that autocast casts straight back for the
   matmul: two full copies per adapter and pass, and a saved fp32 copy for backward. The flag is peft's own.

2. use_fused_forward (step 7): LoRA's forward with the adapter's update accumulated by its own matmul.

peft computes `result + lora_B(lora_A(dropout(x))) * scaling`: B's output is written, scaled in a second pass over it
and added in a third, and backward scales the gradient in a fourth. On a 7B model those passes over every projection's
output are 82 ms of a 576 ms step (H100 profile, docs/benchmarks.md). Here B's matmul adds into the frozen layer's
output in place (`addmm_`, the scale as its alpha), and its backward folds the scale into the small matmuls.

    use_fused_forward(model)    # peft's plain LoRA Linear layers; returns how many

Only where that is all peft's forward would do: one active plain LoRA adapter (no DoRA or other variant, no bias on
B), not merged, adapters enabled, no per-call arguments, and the input in the adapter's dtype or under autocast.
Anything else calls peft's own forward.

QLoRA's 4-bit layers too (peft's bnb Linear4bit): peft clones bitsandbytes' output before adding to it ("defensively",
its comment says, against in-place changes of a view). bitsandbytes 0.50's MatMul4Bit returns a fresh tensor from
`linear` and saves only its input and the packed weight, so adding into it in place is safe; were it ever saved or a
view, autograd's version check would stop backward with an error, not train wrongly. The clone and peft's two
passes were 87 ms of elementwise work in a 622 ms 7B QLoRA step (H100 profile, docs/benchmarks.md).
"""

from __future__ import annotations

import types
from typing import Any


def keep_adapter_inputs_in_compute_dtype(model: Any, dtype: Any) -> int:
    """Plain LoRA layers (not DoRA, whose variant reads the input itself) stop casting their input to the adapter's
    dtype. Only for half-precision training, which the trainer runs under autocast: outside autocast a bf16 input
    would meet float32 adapter weights. Returns how many layers changed."""
    import torch

    from tunesmith.models.patches import check_upstream

    if dtype not in (torch.bfloat16, torch.float16):
        return 0
    check_upstream("peft")
    changed = 0
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled") and hasattr(module, "lora_A") and not module.lora_variant:
            module.cast_input_dtype_enabled = False
            changed += 1
    return changed


def use_fused_forward(model: Any) -> int:
    from peft.tuners.lora.layer import Linear

    from tunesmith.models.patches import check_upstream

    check_upstream("peft")
    fused = {Linear}  # exactly these classes: other subclasses (8-bit, GPTQ, ...) keep peft's forward
    try:
        from peft.tuners.lora.bnb import Linear4bit

        fused.add(Linear4bit)
    except ImportError:  # peft defines it only where bitsandbytes imports
        pass
    changed = 0
    for module in model.modules():
        if type(module) in fused:
            module.forward = types.MethodType(_fused_forward, module)
            changed += 1
    return changed


def _fused_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    import torch

    adapters = self.active_adapters
    name = adapters[0] if len(adapters) == 1 else None
    if (args or kwargs or self.disable_adapters or self.merged or name not in self.lora_A
            or name in self.lora_variant or self.lora_B[name].bias is not None
            or (x.dtype != self.lora_A[name].weight.dtype and not torch.is_autocast_enabled(x.device.type))):
        return type(self).forward(self, x, *args, **kwargs)
    flat = x.reshape(-1, x.shape[-1])
    result = self.base_layer(flat)  # a fresh tensor that the frozen layer's backward does not read
    update = self.lora_A[name](self.lora_dropout[name](flat))
    # In place ops are outside autocast: give the matmul the output's dtype (bf16 under autocast).
    result.addmm_(update.to(result.dtype), self.lora_B[name].weight.to(result.dtype).t(), alpha=self.scaling[name])
    return result.view(*x.shape[:-1], result.shape[-1])
