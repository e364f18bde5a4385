"""In-process decode throughput of the transformers engine under continuous-batching settings, side by side.

    python bench/engine_decode.py --model /tmp/qwen05 --concurrency 1 64 \\
        --variant base '{}' --variant graphs '{"use_cuda_graph": true, "use_async_batching": true}'

Each variant is a JSON object of ContinuousBatchingConfig fields laid over the engine's defaults. Per variant and
concurrency: one warm-up round (graph capture and compilation land there, timed and reported), then a measured
round of N greedy requests with the same ~212-token prompt: output tokens/s, time to first token p50/max.
This isolates the engine from HTTP; bench/serve.py measures the server end to end. Bench-only keys in a variant:
"_fast_paths": false runs transformers' loop without our patches (infer/greedy_steps.py: greedy steps take the argmax),
"_decode_batch": false leaves out only infer/decode_batch.py, "_stream_interval": N passes a request's outputs on
every N tokens (deploy --stream-interval), "_admit_ms": N gathers arrivals at a busy batch for N ms (deploy
--admit-window-ms; with --rounds R --arrival-spread-ms S each stream's later requests arrive spread, as over HTTP),
"_attention": "varlen" | "sdpa" picks the batch's attention (varlen on CPU: the GPU path's mask-free inputs).
--host-timing prints the loop's ms per step in preparing the batch, the step itself and the batch update.

    python bench/engine_decode.py --model M --prompt copy --speculative ngram:8 --concurrency 1 8

--speculative ngram[:N] runs each variant three times: the continuous batch as it is, as a speculating loop runs it
without proposals (synchronous batching, greedy steps taking the argmax as the default loop now does too; "+argmax"),
and with prompt lookup verified inside it (infer/speculative_batch.py; "+ngram"); it prints ms/token (per stream:
wall time over one stream's tokens) and the speed-ups of +ngram over the first two. --prompt copy asks for a text
to be repeated (a copying answer: proposals are accepted)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import time

import torch

from tunesmith.infer import decode_batch
from tunesmith.infer.transformers_engine import TransformersEngine
from tunesmith.infer.types import GenerationRequest, SamplingParams

decode_batch_installer = decode_batch.install_decode_batch
PROMPT = ("Write the product requirements for a feature that lets volunteers swap shifts with each other, "
          "including goals, user stories, acceptance criteria and open questions. ") * 6
COPY = ("Repeat the following text exactly, word for word, and say nothing else.\n\n"
        "Volunteers can now swap shifts with each other. A volunteer opens a shift, taps Swap, and picks a colleague "
        "from the list of people trained for that role. The colleague gets a message and accepts or declines. Once "
        "accepted, both calendars update and the coordinator is told. A swap closer than 24 hours to the shift needs "
        "the coordinator's approval. Every swap is kept in the history of both volunteers.")


async def one(engine, max_tokens: int, prompt: str = PROMPT) -> tuple[float, float, int]:
    start, first, tokens = time.perf_counter(), None, 0
    request = GenerationRequest(messages=[{"role": "user", "content": prompt}],
                                params=SamplingParams(max_tokens=max_tokens, temperature=0.0))
    async for delta in engine.stream(request):
        if first is None and delta.text:
            first = time.perf_counter()
        tokens = delta.completion_tokens
    end = time.perf_counter()
    return (first or end) - start, end - start, tokens


async def round_of(engine, concurrency: int, max_tokens: int, prompt: str = PROMPT, rounds: int = 1,
                   spread_ms: float = 0.0) -> dict:
    """`concurrency` streams of `rounds` requests each, one after another (as bench/serve.py's clients send them).
    `spread_ms`: each later request of a stream waits a uniform 0..spread_ms first, as HTTP spreads the arrivals (each
    client reads its answer's end, sends again, the server parses and renders)."""
    pause = random.Random(0)

    async def stream() -> list[tuple[float, float, int]]:
        answers = []
        for i in range(rounds):
            if i and spread_ms:
                await asyncio.sleep(pause.uniform(0, spread_ms) / 1000)
            answers.append(await one(engine, max_tokens, prompt))
        return answers

    start = time.perf_counter()
    results = [r for answers in await asyncio.gather(*[stream() for _ in range(concurrency)]) for r in answers]
    wall = time.perf_counter() - start
    ttfts = sorted(r[0] for r in results)
    tokens = sum(r[2] for r in results)
    return {"tok_s": tokens / wall, "wall_s": wall, "tokens": tokens, "ms_token": 1000 * wall * concurrency / tokens,
            "ttft_p50": statistics.median(ttfts), "ttft_max": ttfts[-1],
            # as bench/serve.py's p50 decode: each answer's time after its first token, per later token
            "decode_ms_p50": 1000 * statistics.median((r[1] - r[0]) / max(r[2] - 1, 1) for r in results)}


def profiled(measure, label: str) -> dict:
    """One measured round under torch.profiler. The GPU busy share is the union of kernel intervals over the
    round's wall time: far below 100 % means the decode loop waits on the host (Python, launches, syncs)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        result = measure()
    kernels = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                     if e.device_type == torch.autograd.DeviceType.CUDA)
    busy, end = 0.0, float("-inf")
    for start, stop in kernels:
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    result["gpu_busy"] = busy / 1e6 / result["wall_s"]
    print(f"--- {label}: GPU busy {100 * result['gpu_busy']:.1f}% of {result['wall_s']:.2f} s, "
          f"{len(kernels)} kernels", flush=True)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), flush=True)
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=12), flush=True)
    return result


class StepTimes:
    """--host-timing: wall time of the batching loop's three phases, per step, on its own thread: preparing the batch
    (scheduling, index tensors, logits processor arguments: host Python), the step (forward, sampling, outputs to the
    host: compute on CPU, launches or graph replay and the wait for the previous step on a GPU) and the batch update
    (per-request bookkeeping, outputs handed to the requests: host Python)."""

    PHASES = ("prepare", "step", "update")

    def __init__(self) -> None:
        self.totals = dict.fromkeys(self.PHASES, 0.0)
        self.cpu = dict.fromkeys(self.PHASES, 0.0)  # the loop thread's own CPU time: no waits for the GIL or device
        self.steps = 0

    def wrap(self, manager) -> None:
        processor = manager.batch_processor
        self.owners = (("prepare", processor, "prepare_next_batch"), ("step", manager, "_generation_step"),
                       ("update", processor, "update_batch"))
        for phase, owner, name in self.owners:
            setattr(owner, name, self.timed(phase, getattr(owner, name)))

    def unwrap(self) -> None:
        for _, owner, name in self.owners:
            delattr(owner, name)  # back to the class's method

    def timed(self, phase, fn):
        def run(*args, **kwargs):
            start, cpu = time.perf_counter(), time.thread_time()
            result = fn(*args, **kwargs)
            if phase != "prepare" or result:  # an idle loop's empty preparations are not steps
                self.totals[phase] += time.perf_counter() - start
                self.cpu[phase] += time.thread_time() - cpu
                self.steps += phase == "prepare"
            return result

        return run

    def line(self) -> str:
        n = max(self.steps, 1)
        host = (self.totals["prepare"] + self.totals["update"]) / n
        cpu = (self.cpu["prepare"] + self.cpu["update"]) / n
        parts = "  ".join(f"{phase} {1000 * t / n:.2f} (cpu {1000 * self.cpu[phase] / n:.2f})"
                          for phase, t in self.totals.items())
        return (f"{self.steps} steps, ms/step: {parts}; host (prepare + update) {1000 * host:.2f}, "
                f"of it the loop thread's CPU {1000 * cpu:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"), default=[])
    parser.add_argument("--out")
    parser.add_argument("--sample-flag", metavar="PATH",
                        help="create PATH during measured rounds (bench/stack_sampler.py --when-exists PATH)")
    parser.add_argument("--profile", action="store_true",
                        help="run the measured round under torch.profiler: GPU busy share and the top kernels/ops")
    parser.add_argument("--rounds", type=int, default=1,
                        help="requests per stream in the measured round, one after another (bench/serve.py --rounds: "
                             "the same arrivals as deploy's load, for its HTTP overhead)")
    parser.add_argument("--arrival-spread-ms", type=float, default=0.0,
                        help="with --rounds: each stream's later requests wait a uniform 0..N ms first (HTTP's spread "
                             "of arrivals, which deploy --admit-window-ms gathers)")
    parser.add_argument("--host-timing", action="store_true",
                        help="time the batching loop's phases in the measured round (prepare, step, update; ms/step)")
    parser.add_argument("--speculative", metavar="ngram[:N]",
                        help="run each variant without and with prompt lookup inside the batch; print the speed-up")
    parser.add_argument("--kernels", choices=["auto", "liger", "none"], default="auto",
                        help="the fused layers the models load with; a variant's \"_kernels\" applies them from that "
                             "variant on (liger's patches cannot be undone: put the variants without them first)")
    parser.add_argument("--prompt", choices=["spec", "copy"], default="spec",
                        help="spec: write product requirements (~212 tokens); copy: repeat a paragraph")
    parser.add_argument("--engine-process", action="store_true",
                        help="the engine in its own process as deploy runs it on CUDA (infer/engine_process.py), "
                             "streams read across the pipe: deploy without HTTP; default settings only, no variants")
    args = parser.parse_args()
    variants = args.variant or [["default", "{}"]]
    prompt = COPY if args.prompt == "copy" else PROMPT
    if args.engine_process:
        return across_the_pipe(args, prompt)
    engine = TransformersEngine.load(args.model, speculative=args.speculative, kernels=args.kernels)
    print(f"kernels at load: {engine.served[engine.default].kernels}", flush=True)
    spec_tokens = engine.loops.speculate
    if args.speculative:
        if not spec_tokens:
            parser.error("--speculative here is ngram[:N]: prompt lookup inside the continuous batch")
        variants = [[f"{name}{suffix}", json.dumps({**json.loads(options), "_speculate": n})]
                    for name, options in variants
                    for suffix, n in (("", None), ("+argmax", 0), ("+ngram", spec_tokens))]
    prompt_tokens = engine.count_prompt_tokens(GenerationRequest(messages=[{"role": "user", "content": prompt}]))
    print(f"model {args.model}, prompt {prompt_tokens} tokens, max_tokens {args.max_tokens}, greedy", flush=True)
    table = {}
    for name, options in variants:
        options = json.loads(options)
        # A torch switch, not a batching field: SDPA may pick cuDNN attention, which plans per new shape.
        torch.backends.cuda.enable_cudnn_sdp(options.pop("_cudnn_sdp", True))
        engine.loops.speculate = options.pop("_speculate", None)
        # Bench-only switches, not batching fields: our patches of transformers' loop (greedy argmax, host fast
        # paths; infer/greedy_steps.py) and the attention the batch uses (auto | varlen | sdpa; varlen on CPU runs
        # its reference, the GPU path's inputs without a mask)
        engine.loops.fast_paths = options.pop("_fast_paths", True)
        engine.loops.attention = options.pop("_attention", "auto")
        # deploy --stream-interval N: a request's outputs reach its stream every N tokens (infer/continuous.py)
        engine.loops.stream_interval = options.pop("_stream_interval", 1)
        # deploy --admit-window-ms N: arrivals at a busy batch wait up to N ms to join it together (infer/admission.py)
        engine.loops.admit_window_s = options.pop("_admit_ms", 0.0) / 1000
        engine.loops.admissions.clear()
        # "_decode_rows": false: decode-only steps' attention without the query heads packed as rows (infer/attention.py)
        engine.loops.decode_rows = options.pop("_decode_rows", True)
        if "_kernels" in options:  # liger's fused layers from this variant on (models/kernels.py)
            kernels = options.pop("_kernels")
            for served in engine.served.values():
                engine.use_kernels(served, kernels)
                print(f"{name}: kernels {served.kernels}", flush=True)
        # "_decode_batch": false leaves out only infer/decode_batch.py's shortcuts (decode-only steps' batch tensors
        # and cache checks), the other fast paths kept: its A/B on the loop thread's host time (--host-timing)
        decode_batch.install_decode_batch = (decode_batch_installer if options.pop("_decode_batch", True)
                                             else lambda processor: None)
        engine.batching = options
        for served in engine.served.values():
            served.manager = None
        for c in args.concurrency:
            started = time.perf_counter()
            asyncio.run(round_of(engine, c, args.max_tokens, prompt))
            warm = time.perf_counter() - started
            if args.sample_flag:
                open(args.sample_flag, "w").close()
            timing = StepTimes() if args.host_timing else None
            if timing:
                timing.wrap(engine.served[engine.default].manager)
            if args.profile:
                result = profiled(lambda c=c: asyncio.run(round_of(engine, c, args.max_tokens, prompt, args.rounds,
                                                                   args.arrival_spread_ms)),
                                  f"{name}@{c}")
            else:
                result = asyncio.run(round_of(engine, c, args.max_tokens, prompt, args.rounds, args.arrival_spread_ms))
            if args.sample_flag:
                os.remove(args.sample_flag)
            result["warmup_s"] = warm
            table[f"{name}@{c}"] = result
            print(f"{name:12} c={c:3}  {result['tok_s']:8.1f} tok/s  {result['ms_token']:7.1f} ms/token  "
                  f"decode p50 {result['decode_ms_p50']:.1f} ms/token  "
                  f"ttft p50 {result['ttft_p50']:.3f}s max {result['ttft_max']:.3f}s  "
                  f"({result['tokens']} tokens, warm-up {warm:.1f}s)", flush=True)
            if timing:
                timing.unwrap()
                result["host_timing"] = {phase: 1000 * t / max(timing.steps, 1) for phase, t in timing.totals.items()}
                result["host_cpu"] = {phase: 1000 * t / max(timing.steps, 1) for phase, t in timing.cpu.items()}
                result["steps"] = timing.steps
                print(f"{'':12} c={c:3}  {timing.line()}", flush=True)
        asyncio.run(engine.close())
        for served in engine.served.values():
            served.model.destroy_cached_continuous_batching_manager()
        # The next variant builds its own cache (80 % of the GPU) and graphs: hand the freed blocks, the graphs'
        # private pools among them, back first (the off variant ran out of memory after the fast one without this)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if args.speculative:
        counts = engine.speculation_counts()
        for name, (steps, accepted, proposed) in counts.items():
            print(f"speculation on {name}: {steps} verification steps, {proposed} tokens proposed, {accepted} "
                  f"accepted ({100 * accepted / max(proposed, 1):.0f} %)")
        for name, _ in variants:
            if name.endswith("+ngram"):
                base = name[:-len("+ngram")]
                for c in args.concurrency:
                    spec = table[f"{name}@{c}"]
                    for other in (base, f"{base}+argmax"):
                        plain = table[f"{other}@{c}"]
                        print(f"speed-up {name} over {other} c={c}: {spec['tok_s'] / plain['tok_s']:.2f}x tok/s "
                              f"({plain['ms_token']:.1f} -> {spec['ms_token']:.1f} ms/token)", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(table, f, indent=1)


def across_the_pipe(args, prompt: str) -> None:
    """--engine-process: the measured rounds of the default variant, read through EngineProcess."""
    from tunesmith.infer.engine_process import start_engine_process

    engine = start_engine_process("transformers", args.model, kernels=args.kernels)
    table = {}
    for c in args.concurrency:
        started = time.perf_counter()
        asyncio.run(round_of(engine, c, args.max_tokens, prompt))
        warm = time.perf_counter() - started
        result = table[f"process@{c}"] = asyncio.run(round_of(engine, c, args.max_tokens, prompt, args.rounds))
        print(f"{'process':12} c={c:3}  {result['tok_s']:8.1f} tok/s  {result['ms_token']:7.1f} ms/token  "
              f"decode p50 {result['decode_ms_p50']:.1f} ms/token  ttft p50 {result['ttft_p50']:.3f}s "
              f"max {result['ttft_max']:.3f}s  ({result['tokens']} tokens, warm-up {warm:.1f}s)", flush=True)
    asyncio.run(engine.close())
    if args.out:
        with open(args.out, "w") as f:
            json.dump(table, f, indent=1)


if __name__ == "__main__":
    main()
