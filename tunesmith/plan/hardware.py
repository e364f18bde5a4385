"""What this machine has: CUDA GPUs, Apple MPS, CPU cores, RAM and free disk. `probe()` never fails: a part that
cannot be read is left empty and named in `problems`.

    hw = probe()
    hw.gpus[0].total_gib, hw.gpus[0].free_gib, hw.gpus[0].bf16, hw.ram_gib
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

GIB = 1024**3


@dataclass
class GPU:
    index: int
    name: str
    total_gib: float
    free_gib: float
    bf16: bool
    capability: str = ""


@dataclass
class Hardware:
    gpus: list[GPU] = field(default_factory=list)
    mps: bool = False
    cpu_cores: int = 1
    ram_gib: float = 0.0
    ram_free_gib: float = 0.0
    disk_free_gib: float = 0.0
    torch_version: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def device(self) -> str:
        return "cuda" if self.gpus else "mps" if self.mps else "cpu"

    def memory_gib(self) -> float:
        """Memory one device can use for a run: the least free memory over the GPUs (a run is as big as its smallest
        rank); MPS shares RAM with the system (Metal's working-set limit is about 3/4 of it); CPU: available RAM."""
        if self.gpus:
            return min(g.free_gib for g in self.gpus)
        if self.mps:
            return 0.75 * self.ram_gib
        return self.ram_free_gib or self.ram_gib

    def as_dict(self) -> dict:
        return {"device": self.device, "gpus": [g.__dict__ for g in self.gpus], "mps": self.mps,
                "cpu_cores": self.cpu_cores, "ram_gib": round(self.ram_gib, 1), "ram_free_gib": round(self.ram_free_gib, 1),
                "disk_free_gib": round(self.disk_free_gib, 1), "torch": self.torch_version, "problems": self.problems}


def probe(path: str | Path = ".") -> Hardware:
    hw = Hardware(cpu_cores=_cpu_cores())
    for part in (_ram, _disk, _accelerators):
        try:
            part(hw, Path(path)) if part is _disk else part(hw)
        except Exception as err:  # noqa: BLE001 - a probe reports what it could not read, it never stops the plan
            hw.problems.append(f"{part.__name__.strip('_')}: {type(err).__name__}: {err}")
    return hw


def _cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (containers, taskset)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _ram(hw: Hardware) -> None:
    try:
        import psutil

        vm = psutil.virtual_memory()
        hw.ram_gib, hw.ram_free_gib = vm.total / GIB, vm.available / GIB
        return
    except ImportError:
        pass
    pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    hw.ram_gib = pages * page / GIB
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                hw.ram_free_gib = int(line.split()[1]) * 1024 / GIB


def _disk(hw: Hardware, path: Path) -> None:
    hw.disk_free_gib = shutil.disk_usage(path if path.exists() else Path.cwd()).free / GIB


def _accelerators(hw: Hardware) -> None:
    try:
        import torch
    except ImportError:
        hw.problems.append("torch is not installed: GPUs not probed")
        return
    hw.torch_version = torch.__version__
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free, total = _nvml_memory(i) or torch.cuda.mem_get_info(i)
            with torch.cuda.device(i):
                bf16 = torch.cuda.is_bf16_supported()
            hw.gpus.append(GPU(i, props.name, round(total / GIB, 2), round(free / GIB, 2), bf16,
                               f"{props.major}.{props.minor}"))
    mps = getattr(torch.backends, "mps", None)
    hw.mps = bool(mps and mps.is_available())


def _nvml_memory(index: int) -> tuple[int, int] | None:
    """(free, total) from NVML, which sees other processes and creates no CUDA context; None without pynvml.
    NVML counts devices physically: with CUDA_VISIBLE_DEVICES set, fall back to torch's own numbering."""
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
        return int(info.free), int(info.total)
    except Exception:  # noqa: BLE001 - pynvml missing or NVML unavailable
        return None
