"""Scaling out: tokens/s per GPU and scaling efficiency of each engine, and what each engine costs at one GPU.

    python bench/scale.py --workload W2 --nproc 1 --engines single ddp zero2 zero3 fsdp2      # one GPU: overheads
    python bench/scale.py --workload W2 --nproc 1 2 4 8 --engines ddp zero2 fsdp2             # a node of 8
    python bench/scale.py --workload W1 --nproc 8 --nnodes 2 --node-rank R --master-addr HOST # 2 nodes, each runs it
    python bench/scale.py --workload W2 --nproc 8 --engines zero3 --sp 1 2 4 8 --max-seq      # longest sequence
    python bench/scale.py --workload W2 --nproc 2 4 8 --engines fsdp2 tp2 tp4 tp8 --set tuner=full  # tensor parallel

Each configuration is one `python -m torch.distributed.run` of bench/sft.py's tunesmith child (the same synthetic data,
model shapes and measuring window as bench/sft.py; `single` runs it without torchrun, tunesmith's default path),
with tunesmith's own engine flags: ddp (no flag, several processes), zero1/zero2/zero3 (+ -offload), fsdp2
(--fsdp full-shard), tp2/tp4/tp8 (--tensor-parallel N, tuner full; the ranks beyond N shard with FSDP2; the N ranks
of a group share each batch, so a rank's tokens/s is divided by N per GPU). Per configuration it prints rank 0's real tokens/s (per GPU; the data are split evenly), the
total, the peak memory against the memory plan tunesmith's preflight made for that layout, and against the same
engine at the smallest --nproc: scaling efficiency = tok/s per GPU at N / tok/s per GPU at the smallest N. Against
`single` at one GPU: the engine's overhead.

--max-seq finds, for each --sp, the longest max_length (doubling from --seq-start) whose run trains without running
out of memory: sequence parallelism splits each sequence over sp ranks (Ulysses with DeepSpeed, context parallel
with FSDP2).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENGINES = {"single": {}, "ddp": {}, "zero1": {"deepspeed": "zero1"}, "zero2": {"deepspeed": "zero2"},
           "zero3": {"deepspeed": "zero3"}, "zero2-offload": {"deepspeed": "zero2-offload"},
           "zero3-offload": {"deepspeed": "zero3-offload"}, "fsdp2": {"fsdp": "full-shard"},
           **{f"tp{n}": {"tensor_parallel": n, "tuner": "full"} for n in (2, 4, 8)}}
SFT = Path(__file__).resolve().parent / "sft.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="W2", help="a bench/sft.py workload (W1, W2, W3, tiny)")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1], help="processes per node to measure")
    parser.add_argument("--engines", nargs="+", default=["single", "ddp", "zero2", "zero3", "fsdp2"], choices=ENGINES)
    parser.add_argument("--nnodes", type=int, default=1)
    parser.add_argument("--node-rank", type=int, default=0)
    parser.add_argument("--master-addr", default="127.0.0.1")
    parser.add_argument("--master-port", type=int, default=29511)
    parser.add_argument("--steps", type=int, help="measured steps (default: the workload's)")
    parser.add_argument("--warmup", type=int, help="warm-up steps (default: the workload's)")
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--median", type=float, default=600.0, help="median sample length (bench/sft.py)")
    parser.add_argument("--sigma", type=float, default=1.0, help="sigma of log(length) (bench/sft.py)")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="bf16 matmul peak for MFU (0: not reported)")
    parser.add_argument("--sp", type=int, nargs="+", default=[1], help="sequence-parallel sizes (with --max-seq)")
    parser.add_argument("--max-seq", action="store_true", help="the longest max_length that trains, per --sp")
    parser.add_argument("--seq-start", type=int, default=8192)
    parser.add_argument("--set", nargs="*", default=[], help="more SFTConfig overrides, key=value")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per configuration")
    parser.add_argument("--out", help="PREFIX: writes PREFIX.json and PREFIX.md")
    args = parser.parse_args()

    rows = []
    if args.max_seq:
        for sp in args.sp:
            rows.append(longest_sequence(args, sp))
    else:
        for nproc in args.nproc:
            for engine in args.engines:
                if engine == "single" and (nproc > 1 or args.nnodes > 1):
                    continue
                rows.append(measure(args, engine, nproc, args.set))
                print(row_text(rows[-1]), flush=True)
    report = summarise(args, rows)
    print("\n" + report, flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".json").write_text(json.dumps(rows, indent=2))
        Path(args.out + ".md").write_text(report + "\n")


def measure(args: argparse.Namespace, engine: str, nproc: int, extra: list[str], max_length: int | None = None) -> dict:
    overrides = [f"{k}={v}" for k, v in ENGINES[engine].items()] + list(extra)
    if max_length:
        overrides.append(f"max_length={max_length}")
    name = "tunesmith" + (":" + ",".join(overrides) if overrides else "")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        result_path = Path(tmp) / "result.json"
        child = [str(SFT), "--child", name, "--result", str(result_path), "--workload", args.workload,
                 "--samples", str(args.samples), "--median", str(args.median), "--sigma", str(args.sigma),
                 "--child-timeout", str(args.timeout)]
        child += ["--steps", str(args.steps)] if args.steps else []
        child += ["--warmup", str(args.warmup)] if args.warmup else []
        if engine == "single":
            command = [sys.executable, *child]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
                       f"--nnodes={args.nnodes}", f"--node-rank={args.node_rank}", f"--master-addr={args.master_addr}",
                       f"--master-port={args.master_port}", *child]
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
        started = time.perf_counter()
        try:
            done = subprocess.run(command, env=env, timeout=args.timeout, capture_output=True, text=True)
            output, code = done.stdout + done.stderr, done.returncode
        except subprocess.TimeoutExpired:
            output, code = f"timed out after {args.timeout} s", -1
        result = json.loads(result_path.read_text()) if result_path.exists() else {}
    world = 1 if engine == "single" else nproc * args.nnodes
    row = {"engine": engine, "processes": world, "max_length": max_length, "wall_s": round(time.perf_counter() - started, 1),
           **{k: result.get(k) for k in ("tok_s", "peak_alloc_gib", "peak_reserved_gib", "plan_gib", "plan_alloc_gib", "settings",
                                          "first_step_s", "flops_per_token", "last_loss", "layout")}}
    if result.get("tok_s"):  # tensor parallel: the N ranks of a group work on the same tokens
        row["tok_s"] = result["tok_s"] / ENGINES[engine].get("tensor_parallel", 1)
    if code != 0 or not result.get("tok_s"):
        lines = [line for line in output.splitlines() if line.strip()]
        row["error"] = " | ".join(lines[-3:])[-400:] or f"exit {code}"
        row["oom"] = "out of memory" in output.lower() or "outofmemory" in output.lower()
    elif args.peak_tflops:
        row["mfu"] = result["tok_s"] * result["flops_per_token"] / (args.peak_tflops * 1e12)
    return row


def longest_sequence(args: argparse.Namespace, sp: int) -> dict:
    """Double max_length until a run fails for lack of memory; the last that trained is the answer."""
    engine = args.engines[0] if args.engines[0] != "single" else "zero3"
    best, length = None, args.seq_start
    while length <= 1 << 20:
        row = measure(args, engine, max(args.nproc), [*args.set, f"sequence_parallel={sp}"], max_length=length)
        print(row_text(row), flush=True)
        if row.get("error"):
            if not row.get("oom"):
                return {"engine": engine, "sp": sp, "longest": best, "error": row["error"]}
            break
        best, length = length, length * 2
    return {"engine": engine, "sp": sp, "longest": best, "processes": max(args.nproc) * args.nnodes}


def row_text(r: dict) -> str:
    if "sp" in r:
        return f"sp {r['sp']}: longest max_length {r.get('longest')} ({r['engine']})" + (f" - {r['error']}" if r.get("error") else "")
    head = f"{r['engine']:14} x{r['processes']:<3}" + (f" seq {r['max_length']}" if r.get("max_length") else "")
    if r.get("error"):
        return f"{head} FAILED: {r['error']}"
    return (f"{head} {r['tok_s']:9.0f} tok/s per GPU  {r['tok_s'] * r['processes']:10.0f} in all  peak "
            f"{r['peak_alloc_gib']:.1f} GiB (plan {r.get('plan_gib')})")


def summarise(args: argparse.Namespace, rows: list[dict]) -> str:
    lines = [f"**{args.workload}**, `python bench/scale.py {' '.join(sys.argv[1:])}`", ""]
    if args.max_seq:
        lines += ["| sequence parallel | engine | processes | longest max_length that trains |", "|---|---|---|---|"]
        lines += [f"| {r['sp']} | {r['engine']} | {r.get('processes', '')} | {r.get('longest') or r.get('error')} |"
                  for r in rows]
        return "\n".join(lines)
    single = next((r for r in rows if r["engine"] == "single" and r.get("tok_s")), None)
    smallest = {}
    for r in rows:
        if r.get("tok_s") and r["engine"] not in smallest:
            smallest[r["engine"]] = r
    lines += ["| engine | processes | tok/s per GPU | tok/s in all | efficiency vs fewest | vs single-GPU default | "
              "MFU | peak alloc GiB | plan alloc GiB (total) | plan/peak |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['engine']} | {r['processes']} | failed: {r['error'][:150].replace('|', '/')} | | | | | | | |")
            continue
        base = smallest[r["engine"]]
        eff = r["tok_s"] / base["tok_s"]
        vs_single = f"{r['tok_s'] / single['tok_s']:.2f}x" if single else ""
        ratio = (f"{r['plan_alloc_gib'] / r['peak_alloc_gib']:.3f}" if r.get("plan_alloc_gib") and r.get("peak_alloc_gib")
                 else "")
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") else ""
        lines.append(f"| {r['engine']} | {r['processes']} | {r['tok_s']:,.0f} | {r['tok_s'] * r['processes']:,.0f} | "
                     f"{eff:.0%} (x{base['processes']}) | {vs_single} | {mfu} | {r['peak_alloc_gib']:.1f} | "
                     f"{r.get('plan_alloc_gib')} ({r.get('plan_gib')}) | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
