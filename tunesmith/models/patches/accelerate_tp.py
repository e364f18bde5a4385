"""Tensor parallel on CPU processes (gloo): accelerate's layout check, for one ParallelismConfig object (accelerate 1.15).

Upstream: `ParallelismConfig._validate_accelerator` (accelerate/parallelism_config.py) accepts a layout of more than
one rank only when `accelerator.multi_device` (GPU, XPU, NPU... processes), FSDP2 or DeepSpeed is in use, so CPU
processes (DistributedType.MULTI_CPU) are refused before anything runs ("ParallelismConfig is only compatible ...").
Nothing else of the tensor-parallel path depends on the device: transformers shards the model into DTensors over a
gloo mesh (`DistributedConfig(tp_size=N)`), `Accelerator.prepare_model` leaves a tensor-parallel model unwrapped
whatever the device, and the Trainer feeds every rank of a tensor-parallel group the same batch. Measured with 2 gloo
processes: the losses of a tensor-parallel run equal one process's (tests/e2e/test_tensor_parallel_cli.py).

The config's own check still runs, with CPU processes counted as devices (the sizes must still add up to the
processes); tests/e2e/test_tensor_parallel_cli.py checks that accelerate still refuses an unpatched config on CPU.

    args["parallelism_config"] = cpu_tensor_parallel(tp_size=2, dp_shard_size=1)    # train/launch.py, CPU only
"""

from __future__ import annotations

from typing import Any

# imported on the CPU tensor-parallel path only (train/launch.py)
from accelerate.parallelism_config import ParallelismConfig


class _CpuRanksAsDevices:
    """The accelerator as the check reads it: its CPU processes count as devices."""

    multi_device = True

    def __init__(self, accelerator: Any) -> None:
        self._accelerator = accelerator

    def __getattr__(self, name: str) -> Any:
        return getattr(self._accelerator, name)


class CpuTensorParallel(ParallelismConfig):
    """One method over accelerate's: its check, with the CPU ranks counted as devices."""

    def _validate_accelerator(self, accelerator: Any) -> None:
        super()._validate_accelerator(_CpuRanksAsDevices(accelerator))


def cpu_tensor_parallel(tp_size: int, dp_shard_size: int) -> CpuTensorParallel:
    """accelerate's ParallelismConfig for a tensor-parallel layout of CPU processes."""
    from tunesmith.models.patches import check_upstream

    check_upstream("accelerate")
    return CpuTensorParallel(tp_size=tp_size, dp_shard_size=dp_shard_size)
