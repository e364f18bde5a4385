"""Print a plan: a rich table of where the memory goes, the settings that fit and a plain verdict; or JSON."""

from __future__ import annotations

import json
from typing import Any

from tunesmith.plan.estimate import GIB, Estimate, Setup

LABELS = {
    "weights": "weights", "gradients": "gradients", "optimizer": "optimizer states", "activations": "activations",
    "logits": "logits + loss", "kv_cache": "KV cache", "fragmentation": "allocator slack", "context": "CUDA context",
    "runtime": "Python + libraries",  # CPU: the plan is the process's peak RSS, imports included
}


def estimate_dict(est: Estimate) -> dict[str, Any]:
    return {
        "total_gib": round(est.total / GIB, 2), "allocated_gib": round(est.allocated / GIB, 2),
        "reserved_gib": round(est.reserved / GIB, 2), "breakdown_gib": est.breakdown(),
        "phases_gib": {k: round(v / GIB, 2) for k, v in est.phases.items()}, "params": est.params,
        "trainable_params": est.trainable, "host_gib": round(est.host_bytes / GIB, 2), "notes": est.notes,
    }


def settings_dict(s: Setup, grad_accum: int | None = None) -> dict[str, Any]:
    accum = grad_accum or s.grad_accum
    return {
        "method": s.method, "dtype": s.dtype, "optimizer": s.optimizer, "lora_rank": s.lora_rank,
        "max_length": s.seq, "batch_size": s.micro_batch, "grad_accum": accum,
        "global_batch": s.micro_batch * accum * max(1, s.world_size), "gradient_checkpointing": (
            "offload" if s.checkpointing and s.activation_offload else s.checkpointing),
        "attn": s.attn, "packing": s.packing, "zero_stage": s.zero_stage, "fsdp": s.fsdp, "world_size": s.world_size,
        "tensor_parallel": s.tensor_parallel,
        "offload": s.offload,
    }


def print_plan(result: dict[str, Any], as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    m, hw = result["model"], result["hardware"]
    gpu = (hw["gpus"][0]["name"] if hw["gpus"] else "a GPU" if result["memory_source"] == "--gpu-memory"
           else hw["device"].upper())
    console.print(f"[bold]{m['name']}[/bold] ({m['model_type']}, {m['params'] / 1e9:.2f}B parameters, "
                  f"{m['layers']} layers, vocab {m['vocab']:,}) on {gpu}: planning for {result['memory_gib']:.1f} GiB "
                  f"per device ({result['memory_source']}), {result['world_size']} device(s)")
    columns = [(k, result[k]) for k in ("asked", "recommended") if result.get(k)]
    table = Table(title="peak memory per device (GiB)")
    table.add_column("")
    for name, col in columns:
        s = col["settings"]
        head = s["method"] if result["mode"] == "training" else "inference"
        if result["mode"] == "training":
            head += f"\nmb {s['batch_size']} x acc {s['grad_accum']}{' ckpt' if s['gradient_checkpointing'] else ''}"
        table.add_column(f"{name}\n{head}", justify="right")
    keys = [k for k in LABELS if any(k in c["estimate"]["breakdown_gib"] for _, c in columns)]
    for key in keys:
        table.add_row(LABELS[key], *[f"{c['estimate']['breakdown_gib'].get(key, 0.0):.2f}" for _, c in columns])
    table.add_row("[bold]total[/bold]", *[f"[bold]{c['estimate']['total_gib']:.2f}[/bold]" for _, c in columns])
    table.add_row("fits", *[("[green]yes[/green]" if c["fits"] else "[red]no[/red]") for _, c in columns])
    console.print(table)
    if result["mode"] == "training" and result.get("recommended"):
        est = result["recommended"]["estimate"]
        console.print(f"trainable parameters: {est['trainable_params']:,} of {est['params']:,}"
                      + (f"; {est['host_gib']:.1f} GiB in CPU RAM" if est["host_gib"] else ""))
    color = "green" if result["fits"] else "red"
    console.print(f"[{color}]{result['message']}[/{color}]")
    for note in result["notes"]:
        console.print(f"[dim]- {note}[/dim]")
    if result.get("command"):
        console.print(f"[dim]equivalent: {result['command']}[/dim]")
