"""`tunesmith bench serve`: load-test OpenAI-compatible endpoints with concurrent streaming chat requests, side by side.

    tunesmith bench serve --url http://127.0.0.1:8000 --concurrency 1 8 32    # a running endpoint (any server)
    tunesmith bench serve --url http://a:8000 http://b:8001 --concurrency 64   # two backends compared in one run
    tunesmith bench serve --servers tunesmith transformers --model M           # start them here, one after another

Per endpoint and concurrency level: `concurrency` clients each send `rounds` greedy streaming requests one after
another (the same ~prompt_tokens prompt, max_tokens each); reported are requests/s, output tokens/s, p50/p99 latency
and time to first token, decode ms/token, and the ratio of the first endpoint's tokens/s to each other's. Output
tokens are the server's own count (`stream_options.include_usage`) where it reports one, else counted from the
streamed text with the model's tokenizer. bench/serve.py adds the peers only the repository has (a hand-written
server) and is what docs/benchmarks.md ran.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import ConfigError, TunesmithError

log = logging.getLogger("tunesmith")
# where --servers start, one after another
PORTS = {"tunesmith": 8101, "transformers": 8103, "vllm": 8104, "tunesmith-spec": 8105, "tunesmith-chunked": 8106,
         "tunesmith-inproc": 8107, "tunesmith-process": 8108}
SERVERS = tuple(PORTS)


@dataclass
class Sample:
    latency: float
    ttft: float
    tokens: int


# -----------------------------------------------------------------------------
# Servers started here (--servers)


def launch(name: str, folder: str, model_name: str, speculative: str | None = None,
           stream_interval: int = 4) -> tuple[subprocess.Popen, str]:
    """Start one server on its port, its output in /tmp/bench-NAME.log. tunesmith-spec is tunesmith deploy with
    --speculative, tunesmith-chunked with --stream-interval, tunesmith-inproc and tunesmith-process with the engine in
    the server's process and in its own (--engine-process false / true; unset, deploy picks by device); vllm runs in
    VLLM_PYTHON (default .venv-vllm)."""
    port = PORTS[name]
    bin_dir = Path(sys.executable).parent
    if name.startswith("tunesmith"):
        ours = bin_dir / "tunesmith"
        cmd = [str(ours) if ours.exists() else shutil.which("tunesmith") or "tunesmith", "deploy", "--model", folder,
               "--port", str(port), "--max-concurrent", "256"]
        if name == "tunesmith-spec":
            if not speculative:
                raise ConfigError("servers: tunesmith-spec needs --speculative draft=MODEL or ngram[:N]")
            cmd += ["--speculative", speculative]
        if name == "tunesmith-chunked":
            cmd += ["--stream-interval", str(stream_interval)]
        if name in ("tunesmith-inproc", "tunesmith-process"):
            cmd += ["--engine-process", str(name == "tunesmith-process").lower()]
    elif name == "transformers":
        cmd = [shutil.which("transformers", path=str(bin_dir)) or "transformers", "serve", folder,
               "--continuous-batching", "--port", str(port), "--host", "127.0.0.1"]
    elif name == "vllm":  # in the vLLM venv (scripts/vllm-env.sh); ENVIRONMENT.md: its console script is broken
        vpy = os.environ.get("VLLM_PYTHON", ".venv-vllm/bin/python")
        cmd = [vpy, "-m", "vllm.entrypoints.openai.api_server", "--model", folder, "--port", str(port),
               "--served-model-name", model_name, "--gpu-memory-utilization", "0.3"]
    else:
        raise ConfigError(f"servers: {name!r} is not one of {', '.join(SERVERS)}")
    logfile = open(f"/tmp/bench-{name}.log", "w")
    try:
        proc = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)
    except FileNotFoundError as err:
        raise ConfigError(f"servers: cannot start {name} ({err.filename} not found)") from None
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float = 300) -> None:
    """Poll URL/health until it answers 200; a server started here that exits first, or a URL that never answers, is
    an error naming it."""
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise TunesmithError(f"the server for {url} exited with {proc.returncode}; see /tmp/bench-*.log")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TunesmithError(f"{url}: no answer on /health after {timeout:.0f} s; is the server running there?")


def endpoint_model(url: str, model: str | None, api_key: str | None = None) -> str:
    """`model`, or the first model a running endpoint lists. Either way /v1/models must answer: any OpenAI-compatible
    server has it (not every one has /health), and an endpoint that is down or refuses the key says so at once."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        reply = httpx.get(f"{url}/v1/models", headers=headers, timeout=30)
    except httpx.HTTPError as err:
        raise TunesmithError(f"url: {url}: cannot connect ({err}); is the server running there?") from None
    if reply.status_code in (401, 403):
        raise TunesmithError(f"url: {url}/v1/models answered {reply.status_code}; give the endpoint's key (--api-key)")
    if model is not None:
        return model
    try:
        reply.raise_for_status()
        return reply.json()["data"][0]["id"]
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as err:
        raise TunesmithError(f"url: {url}/v1/models lists no model ({err}); name one as URL#MODEL") from None


# -----------------------------------------------------------------------------
# The load


async def one_request(client: Any, url: str, model: str, prompt: str, max_tokens: int, tokenizer) -> Sample:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    ttft, text, reported = None, [], None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise TunesmithError(f"{url}/v1/chat/completions answered {resp.status_code}: "
                                 f"{(await resp.aread()).decode(errors='replace')[:300]}")
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


async def streams(url: str, model: str, prompt: str, max_tokens: int, concurrency: int, rounds: int, tokenizer,
                  api_key: str | None = None) -> tuple[list[Sample], float, float, float]:
    """`concurrency` clients of `rounds` requests each, one after another: their samples, start and end (wall clock)
    and the CPU seconds this process spent on them."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency + 4)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=httpx.Timeout(3600), limits=limits, headers=headers) as client:
        async def stream() -> list[Sample]:
            return [await one_request(client, url, model, prompt, max_tokens, tokenizer) for _ in range(rounds)]

        start, cpu = time.time(), time.process_time()
        samples = [s for answers in await asyncio.gather(*[stream() for _ in range(concurrency)]) for s in answers]
        return samples, start, time.time(), time.process_time() - cpu


def client_part(args: tuple) -> tuple[list[Sample], float, float, float]:
    return asyncio.run(streams(*args[:6], CLIENT_TOKENIZER, *args[6:]))


CLIENT_TOKENIZER = None  # the tokenizer, inherited by forked client processes


def level(url: str, model: str, prompt: str, max_tokens: int, concurrency: int, rounds: int, tokenizer,
          client_procs: int = 1, api_key: str | None = None) -> dict:
    """One load level. With `client_procs` > 1 the streams are split over that many forked client processes, so a
    client that parses thousands of SSE events per second in Python is not what limits the measured rate;
    `client_cpu` is the busiest client process's CPU time over the wall time (near 1.0: the client may limit)."""
    global CLIENT_TOKENIZER
    procs = max(1, min(client_procs, concurrency))
    shares = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
    if procs == 1:
        parts = [asyncio.run(streams(url, model, prompt, max_tokens, concurrency, rounds, tokenizer, api_key))]
    else:
        import multiprocessing

        CLIENT_TOKENIZER = tokenizer
        with multiprocessing.get_context("fork").Pool(procs) as pool:
            parts = pool.map(client_part, [(url, model, prompt, max_tokens, n, rounds, api_key) for n in shares])
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


def line(name: str, concurrency: int, r: dict) -> str:
    """One measured level as the console shows it."""
    return (f"{name:12} c={concurrency:<3} {r['output_tok_per_s']:8.1f} tok/s  {r['requests_per_s']:6.2f} req/s  "
            f"p50/p99 latency {r['p50_latency']:.2f}/{r['p99_latency']:.2f} s  "
            f"p50/p99 TTFT {r['p50_ttft']:.2f}/{r['p99_ttft']:.2f} s  decode {r['p50_decode_ms']:.1f} ms/token  "
            f"({r['mean_tokens']:.0f} tok/answer, client CPU {r['client_cpu']:.0%})")


def render(results: dict[str, dict[int, dict]], title: str) -> str:
    """The markdown table: every endpoint and level, and the first endpoint's tokens/s over each other's."""
    first = next(iter(results), None)
    rows = [title, "", f"| server | streams | output tok/s | req/s | p50 / p99 latency (s) | p50 / p99 TTFT (s) | "
            f"p50 decode ms/token | {first} / this |", "|---|---|---|---|---|---|---|---|"]
    ours = results.get(first, {})
    for name, levels in results.items():
        for c, r in levels.items():
            ratio = (f"{ours[c]['output_tok_per_s'] / r['output_tok_per_s']:.2f}x"
                     if name != first and c in ours and r["output_tok_per_s"] else "")
            rows.append(f"| {name} | {c} | {r['output_tok_per_s']:.1f} | {r['requests_per_s']:.2f} | "
                        f"{r['p50_latency']:.2f} / {r['p99_latency']:.2f} | "
                        f"{r['p50_ttft']:.2f} / {r['p99_ttft']:.2f} | {r['p50_decode_ms']:.1f} | {ratio} |")
    return "\n".join(rows)


def measure(name: str, url: str, model: str, prompt: str, tokenizer, concurrency: list[int], rounds: int,
            max_tokens: int, client_procs: int = 1, api_key: str | None = None) -> dict[int, dict]:
    """One endpoint: a warm-up request, then each level; each level's line printed as it ends."""
    level(url, model, prompt, 8, 1, 1, tokenizer, api_key=api_key)
    levels = {}
    for c in concurrency:
        levels[c] = level(url, model, prompt, max_tokens, c, rounds, tokenizer, client_procs, api_key)
        print(line(name, c, levels[c]), flush=True)
    return levels


def run(cfg: Any) -> dict[str, dict[int, dict]]:
    """`tunesmith bench serve` (cfg: config/bench.py BenchServeConfig): every --url endpoint, then every --servers
    server started here in turn; prints the table and appends it to --out."""
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from tunesmith.models.load import resolve

    folder = str(resolve(cfg.model))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = make_prompt(tokenizer, cfg.prompt_tokens)
    targets = [(url.split("#", 1)[0].rstrip("/"), url.split("#", 1)[1] if "#" in url else None) for url in cfg.url]
    results: dict[str, dict[int, dict]] = {}
    bar = tqdm(total=len(targets) + len(cfg.servers), desc="endpoints", unit="endpoint")
    for url, model in targets:
        results[url] = measure(url, url, endpoint_model(url, model, cfg.api_key), prompt, tokenizer, cfg.concurrency,
                               cfg.rounds, cfg.max_tokens, cfg.client_procs, cfg.api_key)
        bar.update()
    for name in cfg.servers:
        proc, url = launch(name, folder, Path(folder).name, cfg.speculative, cfg.stream_interval)
        try:
            wait_ready(url, proc)
            model = folder if name == "transformers" else Path(folder).name  # transformers serve names it by path
            results[name] = measure(name, url, model, prompt, tokenizer, cfg.concurrency, cfg.rounds, cfg.max_tokens,
                                    cfg.client_procs)
        finally:
            stop(proc)
        bar.update()
    bar.close()
    table = render(results, f"model {cfg.model}, prompt ~{cfg.prompt_tokens} tokens, max_tokens {cfg.max_tokens}, "
                            "greedy, streaming")
    print("\n" + table)
    if cfg.out:
        with open(cfg.out, "a", encoding="utf-8") as f:
            f.write(table + "\n")
    return results
