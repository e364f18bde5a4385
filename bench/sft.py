"""SFT speed on one GPU: tunesmith's default path against TRL's SFTTrainer, its defaults and its best, side by side.

    python bench/sft.py --workload W1 --out $OUT/w1            # tunesmith, trl-default, trl-best
    python bench/sft.py --workload W2 --configs tunesmith trl-best
    python bench/sft.py --workload W1 --configs tunesmith tunesmith:kernels=none tunesmith:gradient_checkpointing=true
    BENCH_UNSLOTH_PYTHONPATH=/tmp/usite python bench/sft.py --workload L8 --configs tunesmith unsloth

Workloads (issue 6). W1: Qwen2.5-0.5B shape, full fine-tuning, max_length 4096, batch 8. W2: Qwen2.5-7B shape, LoRA r16
all-linear, batch 2 (TRL checkpoints by default; tunesmith decides from its memory plan). W3: W2 with QLoRA (needs
bitsandbytes). L8: Unsloth's published benchmark setting on a Llama-3.1-8B shape: QLoRA r32 (alpha 32) all-linear,
max_length 2048, batch 2, gradient accumulation 4, Alpaca-like lengths (median 180 tokens, sigma 0.6: Alpaca's rows
in Llama 3's tokenizer with the Alpaca prompt are ~100-400 tokens). Random weights of the real shape (tunesmith.plan.model_shape's built-in configs, as
bench/make_shape_model.py), no hub and no tokenizer files: the data are token ids, the tokenizer a 3-token stub.

Data, the same for every configuration: --samples samples, lengths lognormal (median --median, sigma --sigma) clipped
to [16, max_length], random ids of the real vocabulary; the first 20-40 % of each sample is a prompt without loss.

Configurations, each in its own process (memory peaks and compile caches do not leak between them):
  tunesmith    what `tunesmith sft` does with no speed flags: train/preflight.py's preflight, then
               train/setup.py's load_trainable + train/speed.py's prepare_model + run_trainer, as train/sft.py runs
               them (only the weights come from the shape instead of from disk, and the rows are already token ids)
  trl-default  TRL's SFTTrainer with its defaults: padding, sdpa, gradient checkpointing, fused AdamW
  trl-best     TRL's best: packing (bfd, padding-free) + flex_attention + use_liger_kernel (and its checkpointing)
  unsloth      Unsloth's FastLanguageModel + its patched TRL SFTTrainer with the settings its notebooks recommend
               (use_gradient_checkpointing="unsloth", adamw_8bit, lora_dropout 0, padding-free left to its own choice),
               the same adapter rank and targets as the others. Unsloth pins transformers <= 5.17 and trl <= 1.15, so its
               child runs on its own site folder: BENCH_UNSLOTH_PYTHONPATH replaces PYTHONPATH for that child only
               (scripts/unsloth-wheels.sh fetches the wheels). The weights come from the shape saved once under --cache.
  NAME:k=v,... the same with overrides: SFTConfig fields for tunesmith, TRL SFTConfig fields for trl-*.

Measured over --steps optimizer steps after --warmup steps, CUDA synchronised at both ends:
  tok/s       real (non-padding) input tokens per second, counted from the batches the model received (the
              attention mask's sum of a padded batch, the non-pad ids of a padding-free one)
  MFU         6N FLOPs per real token for full fine-tuning, 4N for LoRA/QLoRA (no weight gradient for frozen weights),
              N = the weights every token multiplies: all parameters but the input embedding table (tied: the table is
              the LM head, so it counts). Checkpointing's recompute is not counted. Against --peak-tflops (686: the bf16
              matmul measured on the H100 of issue 6). MFU+attn adds causal attention, 6 x layers x q_dim x E[n^2]/E[n]
              per token over this data's sample lengths (forward 2 n^2 q_dim per layer, x3 for training).
  peak        torch.cuda.max_memory_allocated / max_memory_reserved over the whole process
  first step  from the start of training to the end of step 1 (compilation, kernel JIT, allocator warm-up)
  setup       process start to the start of training (imports, weights, trainer and data preparation)

--profile runs PROFILE_STEPS more steps after the measured window under torch.profiler (the timings above are not
affected) and prints, per configuration, where the GPU time went: kernels grouped by kind (matmuls, attention, fused
triton kernels, elementwise, optimizer, copies), the share of the step the GPU was idle, and the top kernels.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

START = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the checkout

WORKLOADS = {
    "W1": dict(shape="qwen2.5-0.5b-instruct", method="full", max_length=4096, batch_size=8, warmup=3, steps=12),
    "W2": dict(shape="qwen2.5-7b-instruct", method="lora", max_length=4096, batch_size=2, warmup=2, steps=8),
    "W3": dict(shape="qwen2.5-7b-instruct", method="qlora", max_length=4096, batch_size=2, warmup=2, steps=8),
    # a 7B full fine-tune: for bench/scale.py's ZeRO-3 (offload) runs, which one GPU cannot do without sharding
    "W4": dict(shape="qwen2.5-7b-instruct", method="full", max_length=2048, batch_size=1, warmup=1, steps=3),
    # a CPU smoke test of this script: a 2-layer model, a few short steps
    "tiny": dict(shape="tiny", method="lora", max_length=256, batch_size=4, warmup=1, steps=2),
    # the README demo's SFT on CPU (examples/prd-assistant/sft.yaml): the embedded SmolLM2-135M's shape, LoRA r16
    # all-linear, one row at a time x GA 4, rows of its data's lengths (median ~300 tokens); compare with
    # `trl-default:gradient_checkpointing=false` (TRL checkpoints by default, which tunesmith does not do on a CPU)
    "demo": dict(shape="smollm2-135m-instruct", method="lora", max_length=640, batch_size=1, grad_accum=4, rank=16,
                 alpha=32, median=300.0, sigma=0.35, warmup=1, steps=3),
    # Unsloth's published benchmark setting (Llama 3.1 8B, Alpaca, batch 2, GA 4, r32, QLoRA on all linear layers)
    "L8": dict(shape="llama-3.1-8b-instruct", method="qlora", max_length=2048, batch_size=2, grad_accum=4, rank=32,
               alpha=32, median=180.0, sigma=0.6, warmup=2, steps=8),
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # "all-linear" spelled out
TINY = dict(model_type="qwen2", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True)  # 2: splits over 2 ranks
DEFAULT_CONFIGS = ["tunesmith", "trl-default", "trl-best"]
REFERENCES = {"trl-default": "TRL default", "trl-best": "TRL best", "unsloth": "Unsloth"}  # the ratio columns
PROFILE_STEPS = 2
# kernel name patterns, first match wins (CUDA kernel names of cuBLAS/cuBLASLt, PyTorch's flash kernels, triton)
KERNEL_KINDS = [("attention", ("flash", "fmha", "attention", "attn")),
                ("optimizer", ("multi_tensor", "adam", "foreach")),
                ("copy/cast", ("memcpy", "memset", "copy", "catarray")),
                ("elementwise/reduce", ("at::native", "elementwise", "reduce")),
                ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "cublas")),
                ("fused triton", ("triton", "_kernel"))]
PAD, EOS, UNK = 0, 1, 2  # the stub tokenizer's only tokens; sample ids start at 3


# -----------------------------------------------------------------------------
# Parent: one child process per configuration, then the table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="W1", choices=list(WORKLOADS))
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--steps", type=int, help="measured optimizer steps (default: per workload)")
    parser.add_argument("--warmup", type=int, help="steps before measuring, >= 1 (default: per workload)")
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--median", type=float, help="median sample length in tokens (default: per workload, 600)")
    parser.add_argument("--sigma", type=float, help="sigma of log(length) (default: per workload, 1.0)")
    parser.add_argument("--peak-tflops", type=float, default=686.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="PREFIX: writes PREFIX.json and PREFIX.md (a folder: FOLDER/sft-<workload>.*)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "tunesmith-bench"),
                        help="where W3 keeps the bf16 weights it quantizes")
    parser.add_argument("--child-timeout", type=int, default=300, help="seconds per configuration")
    parser.add_argument("--profile", action="store_true", help="profile PROFILE_STEPS steps after the measured ones")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = dict(WORKLOADS[args.workload])
    args.steps = args.steps or work["steps"]
    args.warmup = max(1, args.warmup or work["warmup"])
    args.median = args.median or work.get("median", 600.0)
    args.sigma = args.sigma or work.get("sigma", 1.0)
    if args.child:
        return child(args, work)

    print(f"{args.workload}: {work['shape']} {work['method']}, max_length {work['max_length']}, batch "
          f"{work['batch_size']}{describe_work(work)}; {args.samples} samples; warm-up {args.warmup} + {args.steps} "
          "measured steps", flush=True)
    if work["method"] == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        raise SystemExit(f"{args.workload} (QLoRA) needs bitsandbytes, which this machine does not have: skipped")
    results = []
    for name in args.configs:
        results.append(run_child(args, name))
        print_row(results[-1], flush=True)
    report = summarise(args, work, results)
    print("\n" + report["markdown"], flush=True)
    if args.out:
        prefix = Path(args.out)
        if prefix.is_dir() or args.out.endswith("/"):
            prefix = prefix / f"sft-{args.workload}"
        prefix.parent.mkdir(parents=True, exist_ok=True)
        prefix.with_suffix(".json").write_text(json.dumps(report, indent=2))
        prefix.with_suffix(".md").write_text(report["markdown"] + "\n")
        print(f"wrote {prefix}.json and {prefix}.md")


def run_child(args: argparse.Namespace, name: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        result_path = Path(tmp) / "result.json"
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--result", str(result_path),
                "--workload", args.workload, "--steps", str(args.steps), "--warmup", str(args.warmup),
                "--samples", str(args.samples), "--median", str(args.median), "--sigma", str(args.sigma),
                "--peak-tflops", str(args.peak_tflops), "--seed", str(args.seed), "--cache", args.cache] + (
                    ["--profile"] if args.profile else [])
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                   TRANSFORMERS_NO_ADVISORY_WARNINGS="1", TQDM_DISABLE="1")
        if name.partition(":")[0] == "unsloth" and os.environ.get("BENCH_UNSLOTH_PYTHONPATH"):
            env["PYTHONPATH"] = os.environ["BENCH_UNSLOTH_PYTHONPATH"]  # its own pins, apart from ours
            env.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
        print(f"\n=== {name}", flush=True)
        started = time.perf_counter()
        try:
            done = subprocess.run(argv, env=env, timeout=args.child_timeout, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
            output, code = done.stdout, done.returncode
        except subprocess.TimeoutExpired as err:
            output, code = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or ""), -1
            output += f"\n(timed out after {args.child_timeout} s)"
        result = json.loads(result_path.read_text()) if result_path.exists() else {}
    if os.environ.get("BENCH_LOG_DIR"):  # every child's whole output, for the configurations that fail
        log = Path(os.environ["BENCH_LOG_DIR"]) / f"{args.workload}-{name.replace(':', '_').replace('=', '-')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(output)
    result.setdefault("config", name)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    if "tok_s" in result:
        peak = args.peak_tflops * 1e12
        result["mfu"] = result["tok_s"] * result["flops_per_token"] / peak
        result["mfu_attn"] = result["tok_s"] * (result["flops_per_token"] + result["attn_flops_per_token"]) / peak
    if code != 0 or "tok_s" not in result:
        result["error"] = result.get("error") or f"exit {code}"
        print("\n".join(output.splitlines()[-40:]), flush=True)  # the child's last words
    else:
        print("\n".join(line for line in output.splitlines() if line.startswith(("[bench]", "WARNING", "warning"))),
              flush=True)
    if result.get("profile"):
        print(result["profile"], flush=True)
    return result


def describe_work(work: dict) -> str:
    extra = [f"gradient accumulation {work['grad_accum']}"] if work.get("grad_accum", 1) > 1 else []
    if work["method"] != "full":
        extra.append(f"LoRA r{work.get('rank', 16)} alpha {work.get('alpha', 32)} all-linear")
    return "".join(f", {e}" for e in extra)


def print_row(r: dict, **kw) -> None:
    if "tok_s" not in r:
        print(f"{r['config']:28} FAILED: {(str(r.get('error') or '').strip().splitlines() or ['?'])[-1]}", **kw)
        return
    print(f"{r['config']:28} {r['tok_s']:9.0f} tok/s  MFU {r['mfu']:.1%}  peak {r['peak_alloc_gib']:.1f}/"
          f"{r['peak_reserved_gib']:.1f} GiB  first step {r['first_step_s']:.1f} s  setup {r['setup_s']:.1f} s", **kw)


def reference_label(config: str) -> str:
    """`trl-default:gradient_checkpointing=false` -> `TRL default (gradient_checkpointing=false)`."""
    name, _, overrides = config.partition(":")
    return REFERENCES[name] + (f" ({overrides})" if overrides else "")


def summarise(args: argparse.Namespace, work: dict, results: list[dict]) -> dict:
    by = {r["config"]: r for r in results if "tok_s" in r}
    refs = [c for c in by if c.partition(":")[0] in REFERENCES]  # the ratio columns: each peer row, with overrides
    ratios = {}
    for mine in [c for c in by if c.partition(":")[0] == "tunesmith"]:  # every tunesmith row against each reference
        for ref in refs:
            ratios[f"{mine}/{ref}"] = {"tok_s": round(by[mine]["tok_s"] / by[ref]["tok_s"], 2),
                                       "peak_alloc": round(by[mine]["peak_alloc_gib"] / by[ref]["peak_alloc_gib"], 2)}
    env = next((r.get("env") for r in results if r.get("env") and r["config"].partition(":")[0] != "unsloth"),
               next((r.get("env") for r in results if r.get("env")), {}))
    lines = [f"**{args.workload}**: {work['shape']} shape, {work['method']}, max_length {work['max_length']}, batch "
             f"{work['batch_size']}{describe_work(work)}; {args.samples} samples (lognormal, median {args.median:g}, sigma {args.sigma:g}); "
             f"warm-up {args.warmup} + {args.steps} measured steps. {env.get('device', '?')}; "
             + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items()) + ".",
             f"MFU: {'6N' if work['method'] == 'full' else '4N'} FLOPs per token, N = "
             f"{next((r['n_params'] for r in results if 'n_params' in r), 0) / 1e9:.3f}B, against "
             f"{args.peak_tflops:g} TFLOP/s; MFU+attn adds causal attention FLOPs.",
             f"Command: `python bench/sft.py {' '.join(sys.argv[1:])}`", "",
             "| config | real tok/s | " + " | ".join(f"vs {reference_label(ref)}" for ref in refs) + " | MFU | MFU+attn | "
             "peak alloc / reserved GiB | first step s | setup s | settings |",
             "|---|---|" + "---|" * len(refs) + "---|---|---|---|---|---|"]
    for r in results:
        if "tok_s" not in r:
            last = (str(r.get("error") or "").strip().splitlines() or ["?"])[-1]
            lines.append(f"| {r['config']} | failed: {last[:160].replace('|', '/')} |" + " |" * (len(refs) + 6))
            continue
        vs = [f"{r['tok_s'] / by[ref]['tok_s']:.2f}x" if ref in by else "" for ref in refs]
        lines.append(f"| {r['config']} | {r['tok_s']:,.0f} | " + " | ".join(vs) + f" | {r['mfu']:.1%} | "
                     f"{r['mfu_attn']:.1%} | {r['peak_alloc_gib']:.1f} / {r['peak_reserved_gib']:.1f} | "
                     f"{r['first_step_s']:.1f} | {r['setup_s']:.1f} | {r.get('settings', '')} |")
    for key, value in ratios.items():
        lines.append(f"\n{key}: {value['tok_s']:.2f}x tokens/s, {value['peak_alloc']:.2f}x peak memory")
    for r in results:
        if r.get("profile"):
            lines += ["", f"Profile of {r['config']}:", "```", r["profile"], "```"]
    return {"workload": args.workload, **work, "samples": args.samples, "median": args.median, "sigma": args.sigma,
            "warmup": args.warmup, "steps": args.steps, "peak_tflops": args.peak_tflops, "results": results,
            "ratios": ratios, "markdown": "\n".join(lines)}


# -----------------------------------------------------------------------------
# Child: one configuration


def child(args: argparse.Namespace, work: dict) -> None:
    result: dict = {"config": args.child}
    rank = int(os.environ.get("RANK", 0))
    if rank:  # under torchrun (bench/scale.py): rank 0's result is the one reported; the others keep theirs apart
        args.result = f"{args.result}.rank{rank}"
    if "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    try:
        _child(args, work, result)
    except Exception:  # noqa: BLE001 - the parent reports it and goes on with the next configuration
        result["error"] = traceback.format_exc()[-1500:]
        traceback.print_exc()
    Path(args.result).write_text(json.dumps(result))
    sys.exit(1 if "error" in result else 0)


def _child(args: argparse.Namespace, work: dict, result: dict) -> None:
    name, _, overrides = args.child.partition(":")
    if name == "unsloth":
        import unsloth  # noqa: F401 - before transformers, trl and peft, which it patches as it loads
    import torch

    overrides = parse_overrides(overrides)
    for key in ("max_length", "batch_size"):  # the workload's own keys: the data is made for them
        if key in overrides:
            work[key] = overrides.pop(key)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if work["method"] == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError("QLoRA needs bitsandbytes, which this machine does not have")
    config = model_config(work["shape"])
    data, lengths = synthetic_data(args, work, config.vocab_size)
    # FLOPs per real token (see the module docstring); the parent turns them into MFU
    result["n_params"] = matmul_params(work["shape"])
    result["flops_per_token"] = (6 if work["method"] == "full" else 4) * result["n_params"]
    result["attn_flops_per_token"] = 6 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * (
        sum(x * x for x in lengths) / sum(lengths))
    result["env"] = environment(device)
    tokenizer = stub_tokenizer()
    probe = make_probe(args.warmup, args.steps, Path(args.result), result, args.profile)
    if args.profile:  # the trainers run PROFILE_STEPS more steps, after the measured window
        args.steps += PROFILE_STEPS
    out_dir = tempfile.mkdtemp(prefix=f"bench-{name}-")
    if name == "tunesmith":
        trainer = run_tunesmith(args, work, config, data, tokenizer, probe, out_dir, overrides, result)
    elif name in ("trl-default", "trl-best"):
        trainer = run_trl(args, work, config, data, tokenizer, probe, out_dir, overrides, result, name, device, dtype)
    elif name == "unsloth":
        trainer = run_unsloth(args, work, config, tokenizer, data, probe, out_dir, overrides, result)
    else:
        raise SystemExit(f"unknown configuration {name!r}: tunesmith, trl-default, trl-best or unsloth "
                         "(+ :key=value,...)")
    if "tok_s" not in result:
        raise RuntimeError(f"training stopped at step {trainer.state.global_step} before the measured window ended")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result["last_loss"] = losses[-1] if losses else None
    print(f"[bench] {json.dumps({k: v for k, v in result.items() if k != 'env'})}", flush=True)


def parse_overrides(text: str) -> dict:
    import yaml

    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        out[key.strip()] = yaml.safe_load(value)
    return out


def model_config(shape: str):
    from transformers import AutoConfig

    from tunesmith.plan.model_shape import BUILTIN, builtin_config

    if shape in BUILTIN or shape == "tiny":
        values = dict(TINY if shape == "tiny" else builtin_config(shape))
        config = AutoConfig.for_model(values.pop("model_type"), **values)
    else:  # the embedded model: its own config.json, on disk
        from tunesmith.models.load import resolve

        config = AutoConfig.from_pretrained(resolve(shape))
    config.pad_token_id, config.eos_token_id, config.bos_token_id = PAD, EOS, None
    return config


def build_model(work: dict, config, attn: str, args: argparse.Namespace):
    """Random weights of the shape, in bf16 on the GPU (float32 on CPU); QLoRA goes through from_pretrained with
    bitsandbytes' NF4 config (the weights are saved once under --cache)."""
    import torch
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    if work["method"] != "qlora":
        with torch.device(f"cuda:{torch.cuda.current_device()}" if cuda else "cpu"):
            return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    from transformers import BitsAndBytesConfig

    folder = saved_bf16(work, config, args)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, quantization_config=quant, device_map={"": 0},
                                                attn_implementation=attn)


def saved_bf16(work: dict, config, args: argparse.Namespace, tokenizer=None) -> Path:
    """The shape's random weights in bf16 (float32 on CPU), saved once under --cache (built on the GPU), with the stub
    tokenizer where one is given (Unsloth loads both from the folder); the peak memory counters start again after."""
    import torch
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    folder = Path(args.cache) / f"{work['shape']}-{'bf16' if cuda else 'fp32'}"
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        with torch.device("cuda" if cuda else "cpu"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
        staging = Path(str(folder) + f".tmp{os.getpid()}")
        model.save_pretrained(staging)
        del model
        os.replace(staging, folder)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    if tokenizer is not None and not (folder / "tokenizer_config.json").exists():
        tokenizer.save_pretrained(folder)
    return folder


def saved_weights(work: dict, config, args: argparse.Namespace) -> Path:
    """The shape's random weights, saved once under --cache by rank 0 (built on the CPU: the GPUs stay free for the
    shards); the other ranks wait for the folder."""
    import torch
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    folder = Path(args.cache) / f"{work['shape']}-{'bf16' if cuda else 'fp32'}-whole"
    if os.environ.get("RANK", "0") == "0" and not (folder / "config.json").exists():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
        staging = Path(str(folder) + f".tmp{os.getpid()}")
        model.save_pretrained(staging)
        del model
        os.replace(staging, folder)
    while not (folder / "config.json").exists():
        time.sleep(1)
    return folder


def synthetic_data(args: argparse.Namespace, work: dict, vocab: int):
    import datasets
    import numpy as np

    rng = np.random.default_rng(args.seed)
    lengths = np.clip(rng.lognormal(np.log(args.median), args.sigma, args.samples), 16, work["max_length"]).astype(int)
    ids, labels = [], []
    for n in lengths:
        row = rng.integers(3, vocab, int(n)).tolist()
        prompt = int(n * rng.uniform(0.2, 0.4))
        ids.append(row)
        labels.append([-100] * prompt + row[prompt:])
    return datasets.Dataset.from_dict({"input_ids": ids, "labels": labels}), [int(n) for n in lengths]


def stub_tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "<eos>": EOS, "<unk>": UNK}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                   pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def matmul_params(shape: str) -> int:
    from tunesmith.plan.model_shape import ModelShape, load_shape

    if shape == "tiny":
        s = ModelShape("tiny", "qwen2", TINY["vocab_size"], TINY["hidden_size"], TINY["num_hidden_layers"],
                       TINY["num_attention_heads"], TINY["num_key_value_heads"], TINY["head_dim"],
                       TINY["intermediate_size"], True, qkv_bias=True)
    else:
        s = load_shape(shape)
    return s.params() - (0 if s.tied else s.embedding_params())


def environment(device: str) -> dict:
    import torch

    from tunesmith.versions import installed_versions

    versions = installed_versions(("torch", "transformers", "trl", "peft", "liger-kernel", "bitsandbytes"))
    return {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "versions": versions}


# -----------------------------------------------------------------------------
# The configurations


def run_tunesmith(args, work, config, data, tokenizer, probe, out_dir, overrides, result):
    """tunesmith.sft without the data loading: the same calls in the same order as train/sft.py."""
    import tunesmith.models.load as models
    from tunesmith.config import SFTConfig
    from tunesmith.train import run as runs
    from tunesmith.train.preflight import preflight
    from tunesmith.train.setup import load_trainable, run_trainer
    from tunesmith.train.speed import prepare_model

    shape = work["shape"] if work["shape"] != "tiny" else "qwen2.5-0.5b-instruct"  # tiny: any shape for the plan
    # Bench-only experiment, not a config key: torch.compile of each decoder layer after the fast path is set up
    # (the issue's lever for W1's launch-bound idle share); dynamic shapes, since packed batches vary in length.
    compile_layers = overrides.pop("_compile_layers", False)
    cfg = SFTConfig(**{"model": shape, "dataset": ["synthetic"], "tuner": work["method"], "max_length": work["max_length"],
                       "batch_size": work["batch_size"], "max_steps": args.warmup + args.steps, "output_dir": out_dir,
                       "report_to": ["none"], "grad_accum": work.get("grad_accum", 1),
                       **({"lora": {"rank": work["rank"], "alpha": work["alpha"]}} if "rank" in work else {}),
                       **overrides})  # overrides win (bench/scale.py's tuner=full)
    plan = preflight(cfg, shape, rows=1)  # packing and checkpointing left unset: from this machine and the memory plan
    result["plan_gib"] = round(plan.needed_gib, 2) if plan.needed_gib is not None else None
    if plan.needed_gib is not None:  # what max_memory_allocated should read: no allocator slack, no CUDA context
        from tunesmith.plan.model_shape import load_shape
        from tunesmith.train.preflight import estimate

        result["plan_alloc_gib"] = round(estimate(cfg, plan, load_shape(shape)).allocated / 2**30, 2)
    result["layout"] = plan.layout
    # load_trainable loads weights with models.load_model: here they come from the shape instead of a folder
    models.load_model = lambda folder, dtype, device, **kw: build_model(work, config, "sdpa", args)  # any options
    if cfg.tensor_parallel > 1:  # transformers shards as it loads: from a folder of the shape's weights
        folder, shard = saved_weights(work, config, args), models.load_tensor_parallel
        models.load_tensor_parallel = lambda _folder, dtype, n: shard(folder, dtype, n)
    model, device, dtype = load_trainable(cfg, Path(out_dir))
    speed = prepare_model(cfg, model, device, dtype)
    if compile_layers:
        for layer in model.get_decoder().layers:
            layer.compile(dynamic=True)
        speed["attention"] += " +compiled layers"
    runs.save_config(cfg, Path(out_dir), speed=speed)
    result["settings"] = (f"packing={cfg.packing}, checkpointing={cfg.gradient_checkpointing}"
                          + (f" every {cfg.checkpoint_every}" if cfg.gradient_checkpointing and cfg.checkpoint_every
                             else "") + f", attention={speed['attention']}, kernels={speed['kernels']}, "
                          f"optim={speed['optim']}")
    print(f"[bench] tunesmith: {result['settings']}", flush=True)
    return run_trainer(cfg, Path(out_dir), model, tokenizer, data, None, device, dtype, None, [probe])


def run_trl(args, work, config, data, tokenizer, probe, out_dir, overrides, result, name, device, dtype):
    from trl import SFTConfig, SFTTrainer

    best = name == "trl-best"
    model = build_model(work, config, "flex_attention" if best and device == "cuda" else "sdpa", args)
    peft_config = None
    if work["method"] != "full":
        from peft import LoraConfig

        from tunesmith.config.sections import LoraCfg

        lora = LoraCfg()  # the same adapter as tunesmith's default: r16, alpha 32, dropout 0, all-linear
        peft_config = LoraConfig(r=work.get("rank", lora.rank), lora_alpha=work.get("alpha", lora.alpha),
                                 lora_dropout=lora.dropout, target_modules=lora.targets, task_type="CAUSAL_LM")
    options = dict(output_dir=out_dir, per_device_train_batch_size=work["batch_size"], max_length=work["max_length"],
                   gradient_accumulation_steps=work.get("grad_accum", 1), max_steps=args.warmup + args.steps,
                   report_to="none", disable_tqdm=True)
    if device != "cuda":
        options["bf16"] = False
    if best:
        options |= dict(packing=True, padding_free=True, use_liger_kernel=device == "cuda")
    options |= overrides
    trainer = SFTTrainer(model=model, args=SFTConfig(**options), train_dataset=data, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[probe])
    a = trainer.args
    result["settings"] = (f"packing={a.packing}, padding_free={a.padding_free}, attention="
                          f"{model.config._attn_implementation}, checkpointing={a.gradient_checkpointing}, "
                          f"liger={a.use_liger_kernel}, optim={getattr(a.optim, 'value', a.optim)}")
    print(f"[bench] {name}: {result['settings']}", flush=True)
    trainer.train()
    return trainer


def run_unsloth(args, work, config, tokenizer, data, probe, out_dir, overrides, result):
    """Unsloth as its notebooks set it up: FastLanguageModel loads the weights (4-bit NF4 for QLoRA, as its
    load_in_4bit does) and adds the adapter with its offloaded checkpointing; its patched TRL SFTTrainer trains with
    adamw_8bit. Padding-free batching is left unset, for Unsloth to decide."""
    import torch
    from transformers import __version__ as transformers_version
    from trl import SFTConfig, SFTTrainer
    from trl import __version__ as trl_version
    from unsloth import FastLanguageModel
    from unsloth import __version__ as unsloth_version

    from tunesmith.config.sections import LoraCfg

    cuda = torch.cuda.is_available()
    folder = saved_bf16(work, config, args, tokenizer)
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(folder), max_seq_length=work["max_length"], dtype=torch.bfloat16 if cuda else torch.float32,
        load_in_4bit=work["method"] == "qlora", local_files_only=True)
    lora = LoraCfg()
    model = FastLanguageModel.get_peft_model(
        model, r=work.get("rank", lora.rank), lora_alpha=work.get("alpha", lora.alpha), lora_dropout=0, bias="none",
        target_modules=LORA_TARGETS, use_gradient_checkpointing=overrides.pop("use_gradient_checkpointing", "unsloth"),
        random_state=3407)
    options = dict(output_dir=out_dir, per_device_train_batch_size=work["batch_size"], max_length=work["max_length"],
                   gradient_accumulation_steps=work.get("grad_accum", 1), max_steps=args.warmup + args.steps,
                   learning_rate=2e-4, optim="adamw_8bit" if cuda else "adamw_torch", logging_steps=1,
                   report_to="none", disable_tqdm=True, seed=42)  # Unsloth's SFTConfig defaults to 3407: another order
    if not cuda:
        options["bf16"] = False
    options |= overrides
    trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=data, args=SFTConfig(**options),
                         callbacks=[probe])
    a = trainer.args
    result["settings"] = (f"unsloth {unsloth_version} (transformers {transformers_version}, trl {trl_version}): "
                          f"packing={a.packing}, padding_free={a.padding_free}, attention="
                          f"{getattr(model.config, '_attn_implementation', '?')}, checkpointing=unsloth, "
                          f"optim={getattr(a.optim, 'value', a.optim)}")
    print(f"[bench] unsloth: {result['settings']}", flush=True)
    trainer.train()
    return trainer


def make_probe(warmup: int, steps: int, result_path: Path, result: dict, profile: bool = False):
    """A TrainerCallback (transformers loads only in the child) that times the measured window and counts the real
    tokens the model receives (a forward pre-hook: the attention mask's sum when the batch is padded, every token of a
    padding-free row)."""
    from transformers import TrainerCallback

    return type("Probe", (Probe, TrainerCallback), {})(warmup, steps, result_path, result, profile)


class Probe:
    def __init__(self, warmup: int, steps: int, result_path: Path, result: dict, profile: bool = False):
        import torch

        self.warmup, self.steps, self.result_path, self.result = warmup, steps, result_path, result
        self.profile, self.profiler = profile, None
        self.cuda = torch.cuda.is_available()
        self.tokens = None
        self.marks: dict[str, tuple[float, int]] = {}
        self.step_ends: list[float] = []

    def _sync(self) -> float:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _count(self, module, args, kwargs):
        """Summed on the device, read only at the window's ends (a read here would stall the GPU every step): the
        attention mask of a padded batch; the non-pad ids of a padding-free row (TRL may pad it to a multiple)."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        n = mask.sum() if mask is not None else ids.ne(PAD).sum()  # sample ids start at 3: PAD is only padding
        self.tokens = n if self.tokens is None else self.tokens + n

    def _tokens(self) -> int:
        return int(self.tokens.item()) if self.tokens is not None else 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.begin = self._sync()
        self.result["setup_s"] = round(self.begin - START, 1)
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.profile and state.global_step == self.warmup + self.steps:
            import torch

            self._sync()
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                               torch.profiler.ProfilerActivity.CUDA])
            self.profiler.__enter__()
            self.profile_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if self.profiler is not None and step == self.warmup + self.steps + PROFILE_STEPS:
            wall = self._sync() - self.profile_start
            self.profiler.__exit__(None, None, None)
            self.result["profile"] = profile_summary(self.profiler, wall, PROFILE_STEPS)
            self.result_path.write_text(json.dumps(self.result))
            self.profiler = None
        self.step_ends.append(time.perf_counter())
        if step == 1:
            self.result["first_step_s"] = round(self._sync() - self.begin, 2)
        if step == self.warmup:
            self.marks["start"] = (self._sync(), self._tokens())
        if step == self.warmup + self.steps:
            end = (self._sync(), self._tokens())
            (t0, n0), (t1, n1) = self.marks["start"], end
            steps = self.step_ends[self.warmup:]
            gaps = [b - a for a, b in zip([self.step_ends[self.warmup - 1]] + steps[:-1], steps)]
            self.result.update(tok_s=(n1 - n0) / (t1 - t0), tokens=n1 - n0, seconds=round(t1 - t0, 3),
                               step_s=round((t1 - t0) / self.steps, 4), step_s_median=round(statistics.median(gaps), 4),
                               warmup_s=round(t0 - self.begin, 2), **self.memory())
            self.result_path.write_text(json.dumps(self.result))  # kept even if something fails after training

    def memory(self) -> dict:
        import resource

        import torch

        if not self.cuda:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            return {"peak_alloc_gib": rss, "peak_reserved_gib": rss}
        free, total = torch.cuda.mem_get_info()
        return {"peak_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
                "device_used_gib": round((total - free) / 2**30, 2)}


def profile_summary(profiler, wall_s: float, steps: int, top: int = 25) -> str:
    """GPU time by kernel kind and the top kernels, per step, from a torch.profiler run over `steps` steps."""
    kernels: dict[str, float] = {}
    for event in profiler.events():
        if event.device_type.name == "CUDA":
            kernels[event.name] = kernels.get(event.name, 0.0) + event.device_time / 1e3  # ms (us in the profiler)
    busy = sum(kernels.values())
    kinds: dict[str, float] = {}
    for name, ms in kernels.items():
        low = name.lower()
        kind = next((k for k, pats in KERNEL_KINDS if any(p in low for p in pats)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + ms
    step_ms = wall_s * 1e3 / steps
    lines = [f"step {step_ms:.1f} ms; GPU busy {busy / steps:.1f} ms ({busy / steps / step_ms:.0%}), idle "
             f"{max(0.0, step_ms - busy / steps):.1f} ms"]
    lines += [f"  {kind:20} {ms / steps:8.1f} ms/step  {ms / busy:6.1%}" for kind, ms in
              sorted(kinds.items(), key=lambda kv: -kv[1])]
    lines.append("what the CPU ran while the GPU idled (ms/step; nested, so the rows overlap):")
    lines += [f"  {ms / steps:8.2f}  {name[:110]}" for name, ms in idle_causes(profiler.events())]
    lines.append("top kernels (ms/step):")
    lines += [f"  {ms / steps:8.2f}  {name[:110]}" for name, ms in sorted(kernels.items(), key=lambda kv: -kv[1])[:top]]
    return "\n".join(lines)


def idle_causes(events, min_gap_us: float = 20.0, top: int = 15) -> list[tuple[str, float]]:
    """CPU operations (ATen ops, CUDA runtime calls, annotated Python regions) by how long they overlap the gaps
    between GPU kernels, in ms; names that span nearly all the idle time (the step itself) are left out."""
    import bisect

    device = sorted((e.time_range.start, e.time_range.end) for e in events if e.device_type.name == "CUDA")
    gaps: list[tuple[float, float]] = []
    busy_until = device[0][1] if device else 0.0
    for start, end in device[1:]:
        if start > busy_until + min_gap_us:
            gaps.append((busy_until, start))
        busy_until = max(busy_until, end)
    idle = sum(b - a for a, b in gaps)
    if not idle:
        return []
    starts = [a for a, _ in gaps]
    overlap: dict[str, float] = {}
    for e in events:
        if e.device_type.name != "CPU":
            continue
        a, b = e.time_range.start, e.time_range.end
        i, total = max(0, bisect.bisect_right(starts, a) - 1), 0.0
        while i < len(gaps) and gaps[i][0] < b:
            total += max(0.0, min(b, gaps[i][1]) - max(a, gaps[i][0]))
            i += 1
        if total:
            overlap[e.name] = overlap.get(e.name, 0.0) + total
    ranked = sorted(((n, us / 1e3) for n, us in overlap.items() if us < 0.95 * idle), key=lambda kv: -kv[1])
    return ranked[:top]


if __name__ == "__main__":
    main()
