"""DeepSpeed on CPU ranks (gloo) without building its shared-memory allreduce, DeepSpeed 0.19.

Upstream: deepspeed.comm's TorchBackend builds the `deepspeed_shm_comm` op whenever it starts on the CPU accelerator:
a C++ extension compiled at run time (about 100 s of both cores on the 2-core CI machine, and a compiler that a CPU
box may not have), used only by `inference_all_reduce`, DeepSpeed inference's tensor-parallel allreduce. Training
reduces through torch.distributed over gloo and never calls it. DeepSpeed reads whether to build it from one module
dict, `deepspeed.ops.__compatible_ops__` (kept in the module so that edits persist, its comment says); the op marked
incompatible there is not built. tests/models/test_patches.py checks both against the installed DeepSpeed.
"""

from __future__ import annotations

SHM_OP = "deepspeed_shm_comm"


def skip_shm_allreduce_build() -> None:
    """Before DeepSpeed's comm starts on a CPU rank: leave its inference-only shared-memory op unbuilt."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[SHM_OP] = False
