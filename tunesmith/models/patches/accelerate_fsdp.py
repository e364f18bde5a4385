"""FSDP2 on CPU processes (gloo): accelerate's choice of engine, for one ParallelismConfig object (accelerate 1.15).

Upstream: `AcceleratorState.__init__` (accelerate/state.py) turns on FSDP (`DistributedType.FSDP`, `state.fsdp_plugin`)
only inside its branch for GPU-like processes (MULTI_GPU, MULTI_XPU, MULTI_NPU...). CPU processes stay
`DistributedType.MULTI_CPU`, the plugin the Trainer passed is dropped, and the Trainer wraps the model in DDP:
unsharded. Nothing else of FSDP2 depends on the device: torch's `fully_shard` shards into DTensors over a gloo mesh
(gloo implements the two collectives it needs, all_gather_into_tensor and reduce_scatter_tensor, in torch 2.13), and
accelerate's `fsdp2_prepare_model`, its full-state-dict saving and its distributed checkpoints run as on GPUs. So
the one step accelerate skips on CPU is done here, right after it built the state, where it would have done it:
the state says FSDP and holds the Trainer's plugin (with the run's mixed precision, as upstream sets it).

The hook is the ParallelismConfig's `_validate_accelerator`, which `Accelerator.__init__` calls right after it
built the state and the device mesh, before anything reads `distributed_type`; accelerate's own check then runs on
the FSDP state. The plugin is the Trainer's, built by transformers from `TrainingArguments.fsdp_plugin_args` (the
config object gets them in train/setup.py `run_trainer`). tests/e2e/test_distributed_cli.py checks that 2 CPU ranks
each hold half the weights as DTensor shards, train as one process does, and resume across world sizes.

    args["parallelism_config"] = cpu_fsdp(dp_replicate_size=1, dp_shard_size=2)     # train/launch.py, CPU only
    args.parallelism_config.fsdp_plugin_args = args.fsdp_plugin_args                 # train/setup.py
"""

from __future__ import annotations

from typing import Any

# imported on the CPU FSDP path only (train/launch.py)
from accelerate.parallelism_config import ParallelismConfig


class CpuFsdp(ParallelismConfig):
    """accelerate's ParallelismConfig; on validation, the state of CPU processes is set to FSDP first."""

    fsdp_plugin_args: dict[str, Any] | None = None

    def _validate_accelerator(self, accelerator: Any) -> None:
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        state = accelerator.state
        if state.distributed_type == DistributedType.MULTI_CPU and self.fsdp_plugin_args is not None:
            plugin = FullyShardedDataParallelPlugin(**self.fsdp_plugin_args)
            if state._mixed_precision != "no":
                plugin.set_mixed_precision(state._mixed_precision)
            state.distributed_type = DistributedType.FSDP
            state.fsdp_plugin = plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        super()._validate_accelerator(accelerator)


def cpu_fsdp(dp_replicate_size: int, dp_shard_size: int) -> CpuFsdp:
    """accelerate's ParallelismConfig for FSDP2 over CPU processes (hybrid-shard: replicas x shards)."""
    from tunesmith.models.patches import check_upstream

    check_upstream("accelerate")
    return CpuFsdp(dp_replicate_size=dp_replicate_size, dp_shard_size=dp_shard_size)
