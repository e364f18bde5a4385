"""The server's CPU per streamed token: what `tunesmith deploy`'s event loop spends on each token it streams, with
no model in the way.

    python bench/server_cpu.py --streams 64 --max-tokens 200 --rounds 3
    python bench/server_cpu.py --profile prof.out       # cProfile of the event-loop thread over the rounds
    python bench/server_cpu.py --stream-interval 4      # deploy --stream-interval 4: the same digest, fewer chunks

On a GPU the transformers engine's batching thread needs the GIL for ~4 ms of Python per step, and every
microsecond the event loop spends per token is taken from it (issue 24). This measures that microsecond count on
CPU. The server is the real deploy app (uvicorn on uvloop + httptools, the real transformers engine, a tiny random
model's tokenizer and chat template) with one thing replaced: transformers' ContinuousBatchingManager, by a thread
that gives every running request its next token from a fixed script each `--step-ms` and hands the step's outputs to
the event loop in one call_soon_threadsafe, as transformers 5.23 does. Everything from there runs as in production:
BatchingLoops.stream (queue drain, Decoder, Delta), serving.py, the chat route, the SSE response, the Gate
middleware, uvicorn's writes.

The server runs in a subprocess; this process is the client (aiohttp), so the two never share a GIL. Reported per
round: the event-loop thread's CPU (the server's main thread, /proc/PID/task/PID/stat) and the whole process's,
per streamed token (the usage chunk's completion_tokens), and a digest of every stream with its id and created time
masked: two versions of the server that stream the same bytes print the same digest.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from serve import wait_ready  # bench/serve.py: poll /health until the server answers or exits

HERE = Path(__file__).resolve().parent
TICKS = os.sysconf("SC_CLK_TCK")
# the scripted answer: ordinary English, so the tokenizer's decode does what it does on real answers
SCRIPT_TEXT = ("The quick brown fox jumps over the lazy dog while the committee reviews the proposal, "
               "weighs its costs against the expected benefits, and asks for a clearer timeline. ") * 20


# -----------------------------------------------------------------------------
# Server side: the deploy app with a scripted batching loop


class ScriptedBatch:
    """Stands in for transformers' ContinuousBatchingManager (the parts BatchingLoops uses): every step_s, each
    running request gets its next token of `script`, and the step's outputs go to the event loop in one
    call_soon_threadsafe (transformers 5.23's OutputRouter.deliver_batch), each a GenerationOutput with the whole
    generated list copied (RequestState.to_generation_output)."""

    def __init__(self, script: list[int], step_s: float):
        from transformers.generation.continuous_batching.requests import GenerationOutput, RequestStatus

        self.output, self.status = GenerationOutput, RequestStatus
        self.script, self.step_s = script, step_s
        self.requests: dict[str, tuple[list[int], int]] = {}  # id -> (generated, max_new_tokens)
        self.handlers: dict[str, tuple] = {}
        self.lock = threading.Lock()
        self.background_thread_status = SimpleNamespace(can_accept_new_requests=lambda: None)
        self.batch_processor = None
        threading.Thread(target=self._run, daemon=True, name="scripted-batch").start()

    def is_running(self) -> bool:
        return True

    def register_result_handler(self, request_id: str, callback) -> None:
        with self.lock:
            self.handlers[request_id] = (callback, asyncio.get_running_loop())

    def add_request(self, prompt, request_id: str, max_new_tokens: int, **kwargs) -> str:
        with self.lock:
            self.requests[request_id] = ([], max_new_tokens)
        return request_id

    def cancel_request(self, request_id: str) -> None:
        with self.lock:
            self.requests.pop(request_id, None)
            self.handlers.pop(request_id, None)

    def stop(self, block: bool = True, timeout: float | None = None) -> None:
        pass

    def _run(self) -> None:
        while True:
            time.sleep(self.step_s)
            batch, loop = [], None
            with self.lock:
                for rid, (generated, limit) in list(self.requests.items()):
                    generated.append(self.script[len(generated) % len(self.script)])
                    done = len(generated) >= limit
                    status = self.status.FINISHED if done else self.status.DECODING
                    out = self.output(request_id=rid, generated_tokens=generated[:], status=status)
                    callback, loop = self.handlers[rid]
                    batch.append((callback, out))
                    if done:
                        del self.requests[rid], self.handlers[rid]
            if batch:
                loop.call_soon_threadsafe(_run_batch, batch)


def _run_batch(batch: list) -> None:
    for callback, out in batch:
        callback(out)


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from tunesmith.config import DeployConfig
    from tunesmith.infer import load_engine
    from tunesmith.serve.app import build_app

    engine = load_engine("transformers", model=args.model_dir, device="cpu", dtype="float32",
                         stream_interval=args.stream_interval)
    for served in engine.served.values():
        script = served.template.tokenizer.encode(SCRIPT_TEXT, add_special_tokens=False)
        served.manager = ScriptedBatch(script, args.step_ms / 1000)
    app = build_app(engine, DeployConfig(model=args.model_dir, port=args.port, max_concurrent=1024,
                                         stream_interval=args.stream_interval))
    profiler = None
    if args.profile:
        import cProfile
        import signal

        profiler = cProfile.Profile()
        signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())
        signal.signal(signal.SIGUSR2, lambda *_: (profiler.disable(), profiler.dump_stats(args.profile)))
    uvicorn.run(app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools", log_level="warning")


# -----------------------------------------------------------------------------
# Client side


def cpu_seconds(pid: int, tid: int | None = None) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, or of one of its threads."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


async def one_stream(session, url: str, max_tokens: int) -> tuple[int, str]:
    """(completion tokens, what the stream said): its text, finish reasons and usage. Not its bytes: how many tokens
    one chunk carries depends on timing (a stream takes every output queued since its last chunk)."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Tell me a story."}], "stream": True,
            "max_tokens": max_tokens, "stream_options": {"include_usage": True}}
    async with session.post(url, json=body) as response:
        data = await response.read()
    text, finishes, usage = [], [], None
    for line in data.decode().split("\n\n"):
        if not line.startswith("data: {"):
            continue
        chunk = json.loads(line[6:])
        usage = chunk["usage"] or usage
        for choice in chunk["choices"]:
            text.append(choice["delta"].get("content") or "")
            finishes.append(choice["finish_reason"])
    said = json.dumps(["".join(text), [f for f in finishes if f], usage, data.endswith(b"data: [DONE]\n\n")])
    return (usage or {}).get("completion_tokens", 0), said


async def load(port: int, streams: int, max_tokens: int) -> tuple[int, list[str]]:
    import aiohttp

    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        results = await asyncio.gather(*(one_stream(session, url, max_tokens) for _ in range(streams)))
    return sum(n for n, _ in results), [body for _, body in results]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--step-ms", type=float, default=20.0, help="the scripted batching loop's step")
    p.add_argument("--port", type=int, default=8199)
    p.add_argument("--model-dir", help="a tiny model folder (made under a temp dir when left out)")
    p.add_argument("--stream-interval", type=int, default=1, help="deploy's --stream-interval: tokens per chunk")
    p.add_argument("--profile", help="write a cProfile of the server's event-loop thread over the rounds here")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the server subprocess
    args = p.parse_args()
    if args.serve:
        return serve(args)
    if args.model_dir is None:
        sys.path.insert(0, str(HERE.parent / "tests"))
        from tiny import make_tiny_model

        args.model_dir = str(make_tiny_model(Path(tempfile.mkdtemp()) / "tiny"))
    cmd = [sys.executable, __file__, "--serve", "--port", str(args.port), "--model-dir", args.model_dir,
           "--step-ms", str(args.step_ms), "--stream-interval", str(args.stream_interval)] + (["--profile", args.profile] if args.profile else [])
    proc = subprocess.Popen(cmd)
    try:
        wait_ready(f"http://127.0.0.1:{args.port}", proc)
        asyncio.run(load(args.port, 4, 20))  # warm-up: first-use paths, the Framing templates' imports
        if args.profile:
            os.kill(proc.pid, __import__("signal").SIGUSR1)
        per_token, digests = [], set()
        for r in range(args.rounds):
            loop0, proc0, wall0 = cpu_seconds(proc.pid, proc.pid), cpu_seconds(proc.pid), time.perf_counter()
            tokens, said = asyncio.run(load(args.port, args.streams, args.max_tokens))
            loop1, proc1, wall1 = cpu_seconds(proc.pid, proc.pid), cpu_seconds(proc.pid), time.perf_counter()
            digest = hashlib.sha256("".join(sorted(said)).encode()).hexdigest()[:16]
            digests.add(digest)
            user, system = ((b - a) / tokens * 1e6 for a, b in zip(loop0, loop1))
            per_token.append(user + system)
            print(f"round {r + 1}: {tokens} tokens in {wall1 - wall0:.2f} s; event loop {user + system:.1f} us/token "
                  f"(user {user:.1f}, system {system:.1f}), process {(sum(proc1) - sum(proc0)) / tokens * 1e6:.1f} "
                  f"us/token; streams digest {digest}", flush=True)
        if args.profile:
            os.kill(proc.pid, __import__("signal").SIGUSR2)
            time.sleep(1)
        per_token.sort()
        print(f"event loop us/token: median {per_token[len(per_token) // 2]:.1f}, min {per_token[0]:.1f}, "
              f"max {per_token[-1]:.1f}; digests {sorted(digests)}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
