"""Settings that fit: the method, micro-batch, accumulation and checkpointing for a memory budget.

    choice = recommend(shape, Setup(seq=2048), memory_gib=24, target_batch=16, max_micro=4)
    choice.setup.method, choice.setup.micro_batch, choice.grad_accum, choice.setup.checkpointing

Preferences, in order: full fine-tuning only when it fits comfortably (<= 85% of memory: full runs also hold
evaluation and checkpoint-saving buffers that a step does not show), else LoRA, else QLoRA; no gradient
checkpointing while any micro-batch fits without it (it costs ~30% speed); the largest micro-batch that fits, with
gradient accumulation making up the target batch; CPU offload only when ZeRO/FSDP was asked and nothing fits without.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from tunesmith.plan.estimate import GIB, Estimate, Setup, estimate_training
from tunesmith.plan.model_shape import ModelShape

FIT = 0.97      # estimates already hold allocator slack and the CUDA context; 3% more for what they do not model
COMFORT = 0.85  # full fine-tuning is chosen automatically only below this share


@dataclass
class Choice:
    fits: bool
    setup: Setup
    estimate: Estimate
    grad_accum: int
    message: str
    tried: list[str] = field(default_factory=list)


def micro_batches(max_micro: int, per_device: int) -> list[int]:
    """Candidate micro-batches, largest first: max_micro (capped by the per-device batch) and the powers of two below."""
    top = max(1, min(max_micro, per_device))
    out = [top] + [2**k for k in range(int(math.log2(top)), -1, -1) if 2**k < top]
    return out


def recommend(shape: ModelShape, base: Setup, memory_gib: float, target_batch: int, max_micro: int,
              methods: list[str] | None = None, checkpointing: bool | None = None,
              host_ram_gib: float | None = None) -> Choice:
    """Search method x checkpointing x micro-batch in preference order; the first that fits wins."""
    world = max(1, base.world_size)
    per_device = math.ceil(target_batch / world)
    auto_method = methods is None
    methods = methods or (["full", "lora"] + ([] if base.device == "mps" else ["qlora"]))  # bnb has no MPS kernels
    # last resort on one GPU per process: checkpointed layer inputs in host memory (ZeRO/FSDP offload their own way)
    own_offload = base.device == "cuda" and not (base.zero_stage or base.fsdp)
    ckpt_options: list[bool | str] = ([False, True] + (["offload"] if own_offload else []) if checkpointing is None
                                      else [checkpointing])
    offload_options = [base.offload] + ([True] if (base.zero_stage or base.fsdp) and not base.offload else [])
    budget = memory_gib * GIB
    tried: list[str] = []
    smallest: tuple[float, Setup, Estimate] | None = None
    for offload in offload_options:
        for method in methods:
            share = COMFORT if auto_method and method == "full" else FIT
            for ckpt in ckpt_options:
                for micro in micro_batches(max_micro, per_device):
                    setup = replace(base, method=method, checkpointing=bool(ckpt), micro_batch=micro, offload=offload,
                                    activation_offload=base.activation_offload or ckpt == "offload",
                                    grad_accum=math.ceil(per_device / micro))
                    est = estimate_training(shape, setup)
                    if smallest is None or est.total <= smallest[0]:  # ties: the later, smaller setting
                        smallest = (est.total, setup, est)
                    host_ok = host_ram_gib is None or est.host_bytes <= 0.9 * host_ram_gib * GIB
                    if est.total <= share * budget and host_ok:
                        return Choice(True, setup, est, setup.grad_accum, _describe(setup, est, memory_gib), tried)
                tried.append(f"{method}{' + checkpointing' if ckpt else ''}{' offloaded' if ckpt == 'offload' else ''}"
                             f"{' + offload' if offload else ''}, "
                             f"micro-batch 1: {est.total / GIB:.1f} GiB")
    assert smallest is not None
    _, setup, est = smallest
    return Choice(False, setup, est, setup.grad_accum, _nothing_fits(shape, setup, est, memory_gib), tried)


def _describe(s: Setup, est: Estimate, memory_gib: float) -> str:
    ckpt = "with gradient checkpointing" if s.checkpointing else "without gradient checkpointing"
    if s.checkpointing and s.activation_offload:
        ckpt += " (layer inputs offloaded to CPU memory)"
    return (f"{s.method} {ckpt}, micro-batch {s.micro_batch} x {s.grad_accum} accumulation steps: "
            f"{est.total / GIB:.1f} of {memory_gib:.1f} GiB ({est.total / (memory_gib * GIB):.0%})")


def _nothing_fits(shape: ModelShape, s: Setup, est: Estimate, memory_gib: float) -> str:
    need = est.total / GIB
    fixes = []
    if s.seq > 512:
        fixes.append(f"a shorter --max-length (now {s.seq})")
    if s.method != "qlora" and s.device != "mps":
        fixes.append("--tuner qlora")
    if not (s.zero_stage or s.fsdp):
        fixes.append("more GPUs with --nproc-per-node N --deepspeed zero3-offload")
    fixes.append("a smaller model (tunesmith models lists some)")
    return (f"nothing fits in {memory_gib:.1f} GiB: the smallest setting tried, {s.method} with micro-batch "
            f"{s.micro_batch}{' and checkpointing' if s.checkpointing else ''}, needs {need:.1f} GiB "
            f"(weights alone {est.parts['weights'] / GIB:.1f} GiB). Try " + ", or ".join(fixes) + ".")
