"""Load-test OpenAI-compatible endpoints with concurrent streaming chat requests, side by side.

    python bench/serve.py --model smollm2-135m-instruct --servers tunesmith transformers naive \\
        --concurrency 1 8 32 64 --max-tokens 256 --prompt-tokens 212 --out results.md
    python bench/serve.py --url http://127.0.0.1:8000 --concurrency 8      # an endpoint that is already running
    python bench/serve.py --model qwen2.5-7b-instruct --servers tunesmith tunesmith-spec \
        --speculative draft=qwen2.5-0.5b-instruct --concurrency 1 8          # speculative decoding's speed-up
    python bench/serve.py --servers tunesmith tunesmith-chunked --stream-interval 4 --concurrency 64  # chunked streams

Per server and concurrency level: requests/s, output tokens/s, p50/p99 latency and time to first token; then the
ratios of tunesmith to each peer. Output tokens are the server's own count (`stream_options.include_usage`) where
it reports one, else counted from the streamed text with the model's tokenizer. Each server is started, warmed up with one request, measured, and stopped in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
PORTS = {"tunesmith": 8101, "naive": 8102, "transformers": 8103, "vllm": 8104, "tunesmith-spec": 8105,
         "tunesmith-chunked": 8106}


@dataclass
class Sample:
    latency: float
    ttft: float
    tokens: int


def launch(name: str, folder: str, model_name: str, speculative: str | None = None,
           stream_interval: int = 4) -> tuple[subprocess.Popen, str]:
    port = PORTS[name]
    bin_dir = Path(sys.executable).parent
    # tunesmith-spec: the same with --speculative; tunesmith-chunked: with --stream-interval
    if name in ("tunesmith", "tunesmith-spec", "tunesmith-chunked"):
        ours = bin_dir / "tunesmith"
        cmd = [str(ours) if ours.exists() else shutil.which("tunesmith") or "tunesmith", "deploy", "--model", folder,
               "--port", str(port), "--max-concurrent", "256"]
        if name == "tunesmith-spec":
            if not speculative:
                raise SystemExit("tunesmith-spec needs --speculative draft=MODEL or ngram[:N]")
            cmd += ["--speculative", speculative]
        if name == "tunesmith-chunked":
            cmd += ["--stream-interval", str(stream_interval)]
    elif name == "naive":
        cmd = [sys.executable, str(HERE / "naive_server.py"), folder, "--port", str(port)]
    elif name == "transformers":
        cmd = [shutil.which("transformers", path=str(bin_dir)) or "transformers", "serve", folder,
               "--continuous-batching", "--port", str(port), "--host", "127.0.0.1"]
    elif name == "vllm":  # in the vLLM venv (scripts/vllm-env.sh); ENVIRONMENT.md: its console script is broken
        vpy = os.environ.get("VLLM_PYTHON", ".venv-vllm/bin/python")
        cmd = [vpy, "-m", "vllm.entrypoints.openai.api_server", "--model", folder, "--port", str(port),
               "--served-model-name", model_name, "--gpu-memory-utilization", "0.3"]
    else:
        raise SystemExit(f"unknown server {name}")
    log = open(f"/tmp/bench-{name}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"server at {url} exited with {proc.returncode}; see /tmp/bench-*.log")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"server at {url} not ready after {timeout:.0f} s")


async def one_request(client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int, tokenizer) -> Sample:
    import json

    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    ttft, text, reported = None, [], None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            reported = (chunk.get("usage") or {}).get("completion_tokens", reported)
            for choice in chunk.get("choices", []):
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece:
                    ttft = ttft or time.perf_counter() - start
                    text.append(piece)
    end = time.perf_counter()
    # The server's own count where it reports usage: re-tokenizing the text undercounts answers of random-weight
    # models (their token strings merge into fewer tokens), which made decode ms/token look 2-4x slower.
    tokens = reported or len(tokenizer("".join(text), add_special_tokens=False)["input_ids"])
    return Sample(end - start, ttft if ttft is not None else end - start, tokens)


async def streams(url: str, model: str, prompt: str, max_tokens: int, concurrency: int, rounds: int,
                  tokenizer) -> tuple[list[Sample], float, float, float]:
    """`concurrency` clients of `rounds` requests each, one after another: their samples, start and end (wall clock)
    and the CPU seconds this process spent on them."""
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(3600), limits=limits) as client:
        async def stream() -> list[Sample]:
            return [await one_request(client, url, model, prompt, max_tokens, tokenizer) for _ in range(rounds)]

        start, cpu = time.time(), time.process_time()
        samples = [s for answers in await asyncio.gather(*[stream() for _ in range(concurrency)]) for s in answers]
        return samples, start, time.time(), time.process_time() - cpu


def client_part(args: tuple) -> tuple[list[Sample], float, float, float]:
    return asyncio.run(streams(*args, CLIENT_TOKENIZER))


CLIENT_TOKENIZER = None  # the tokenizer, inherited by forked client processes


def level(url: str, model: str, prompt: str, max_tokens: int, concurrency: int, rounds: int, tokenizer,
          client_procs: int = 1) -> dict:
    """One load level. With `client_procs` > 1 the streams are split over that many forked client processes, so a
    client that parses thousands of SSE events per second in Python is not what limits the measured rate;
    `client_cpu` is the busiest client process's CPU time over the wall time (near 1.0: the client may limit)."""
    global CLIENT_TOKENIZER
    procs = max(1, min(client_procs, concurrency))
    shares = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
    if procs == 1:
        parts = [asyncio.run(streams(url, model, prompt, max_tokens, concurrency, rounds, tokenizer))]
    else:
        import multiprocessing

        CLIENT_TOKENIZER = tokenizer
        with multiprocessing.get_context("fork").Pool(procs) as pool:
            parts = pool.map(client_part, [(url, model, prompt, max_tokens, n, rounds) for n in shares])
    samples = [s for part in parts for s in part[0]]
    wall = max(p[2] for p in parts) - min(p[1] for p in parts)
    lat = sorted(s.latency for s in samples)
    ttft = sorted(s.ttft for s in samples)
    p99 = lambda xs: xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]  # noqa: E731
    return {"requests_per_s": len(samples) / wall, "output_tok_per_s": sum(s.tokens for s in samples) / wall,
            "p50_latency": statistics.median(lat), "p99_latency": p99(lat), "p50_ttft": statistics.median(ttft),
            "p99_ttft": p99(ttft), "mean_tokens": statistics.mean(s.tokens for s in samples),
            "client_cpu": max(p[3] / (p[2] - p[1]) for p in parts),
            # per-token decode time of each answer: comparable across models whose answers stop at different lengths
            "p50_decode_ms": statistics.median([(s.latency - s.ttft) / (s.tokens - 1) * 1e3
                                                for s in samples if s.tokens > 1] or [float("nan")])}


def make_prompt(tokenizer, n_tokens: int) -> str:
    words = ("Write a detailed product requirements document for a feature that lets volunteers sign up for "
             "disaster-response shifts, with matching by skills, distance and availability. ").split()
    text, i = "", 0
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < n_tokens:
        text += words[i % len(words)] + " "
        i += 1
    return text.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="registry name or folder")
    parser.add_argument("--servers", nargs="+", default=["tunesmith", "transformers", "naive"])
    parser.add_argument("--url", help="measure this running endpoint instead of launching servers")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32, 64])
    parser.add_argument("--rounds", type=int, default=2, help="requests per stream at each level")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=212)
    parser.add_argument("--out", help="append the markdown table to this file")
    parser.add_argument("--client-procs", type=int, default=1,
                        help="split each level's streams over this many client processes (thousands of SSE events per "
                             "second are more than one Python client parses)")
    parser.add_argument("--speculative", help="the tunesmith-spec server's --speculative (draft=MODEL, ngram[:N])")
    parser.add_argument("--stream-interval", type=int, default=4, help="the tunesmith-chunked server's --stream-interval")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from tunesmith.models.load import resolve

    folder = str(resolve(args.model))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = make_prompt(tokenizer, args.prompt_tokens)
    targets = [("endpoint", args.url)] if args.url else [(s, None) for s in args.servers]
    results: dict[str, dict[int, dict]] = {}
    for name, url in targets:
        proc = None
        if url is None:
            proc, url = launch(name, folder, Path(folder).name, args.speculative, args.stream_interval)
        try:
            wait_ready(url, proc)
            served = Path(folder).name if name != "transformers" else folder
            level(url, served, prompt, 8, 1, 1, tokenizer)  # warm-up
            results[name] = {}
            for c in args.concurrency:
                results[name][c] = level(url, served, prompt, args.max_tokens, c, args.rounds, tokenizer,
                                         args.client_procs)
                r = results[name][c]
                print(f"{name:12} c={c:<3} {r['output_tok_per_s']:8.1f} tok/s  {r['requests_per_s']:6.2f} req/s  "
                      f"p50/p99 latency {r['p50_latency']:.2f}/{r['p99_latency']:.2f} s  "
                      f"p50/p99 TTFT {r['p50_ttft']:.2f}/{r['p99_ttft']:.2f} s  decode {r['p50_decode_ms']:.1f} ms/token  "
                      f"({r['mean_tokens']:.0f} tok/answer, client CPU {r['client_cpu']:.0%})",
                      flush=True)
        finally:
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)
    table = render(results, args)
    print("\n" + table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table + "\n")


def render(results: dict, args) -> str:
    spec = f", tunesmith-spec: --speculative {args.speculative}" if args.speculative else ""
    rows = [f"model {args.model}, prompt ~{args.prompt_tokens} tokens, max_tokens {args.max_tokens}, greedy, "
            f"streaming{spec}",
            "", "| server | streams | output tok/s | req/s | p50 / p99 latency (s) | p50 / p99 TTFT (s) | p50 decode ms/token "
            "| tunesmith / this |", "|---|---|---|---|---|---|---|---|"]
    ours = results.get("tunesmith", {})
    for name, levels in results.items():
        for c, r in levels.items():
            ratio = (f"{ours[c]['output_tok_per_s'] / r['output_tok_per_s']:.2f}x"
                     if name != "tunesmith" and c in ours and r["output_tok_per_s"] else "")
            rows.append(f"| {name} | {c} | {r['output_tok_per_s']:.1f} | {r['requests_per_s']:.2f} | "
                        f"{r['p50_latency']:.2f} / {r['p99_latency']:.2f} | {r['p50_ttft']:.2f} / {r['p99_ttft']:.2f} | "
                        f"{r['p50_decode_ms']:.1f} | {ratio} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
