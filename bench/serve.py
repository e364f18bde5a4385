"""Load-test OpenAI-compatible endpoints with concurrent streaming chat requests, side by side: `tunesmith bench serve`
(tunesmith/serve/loadtest.py) plus the peer only this repository has, a hand-written server (bench/naive_server.py).

    python bench/serve.py --model smollm2-135m-instruct --servers tunesmith transformers naive \\
        --concurrency 1 8 32 64 --max-tokens 256 --prompt-tokens 212 --out results.md
    python bench/serve.py --url http://127.0.0.1:8000 --concurrency 8      # an endpoint that is already running
    python bench/serve.py --model qwen2.5-7b-instruct --servers tunesmith tunesmith-spec \\
        --speculative draft=qwen2.5-0.5b-instruct --concurrency 1 8          # speculative decoding's speed-up
    python bench/serve.py --servers tunesmith tunesmith-chunked --stream-interval 4 --concurrency 64  # chunked streams

Per server and concurrency level: requests/s, output tokens/s, p50/p99 latency and time to first token; then the
ratios of the first server to each other. Output tokens are the server's own count (`stream_options.include_usage`)
where it reports one, else counted from the streamed text with the model's tokenizer. Each server is started, warmed
up with one request, measured, and stopped in turn.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from tunesmith.serve import loadtest
from tunesmith.serve.loadtest import wait_ready  # noqa: F401 - bench/server_cpu.py polls its server with it

HERE = Path(__file__).resolve().parent
NAIVE_PORT = 8102


def launch(name: str, folder: str, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    if name != "naive":
        return loadtest.launch(name, folder, Path(folder).name, args.speculative, args.stream_interval)
    log = open("/tmp/bench-naive.log", "w")
    cmd = [sys.executable, str(HERE / "naive_server.py"), folder, "--port", str(NAIVE_PORT)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{NAIVE_PORT}"


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
    parser.add_argument("--stream-interval", type=int, default=4,
                        help="the tunesmith-chunked server's --stream-interval")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from tunesmith.models.load import resolve

    folder = str(resolve(args.model))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = loadtest.make_prompt(tokenizer, args.prompt_tokens)
    measure = lambda name, url, model: loadtest.measure(  # noqa: E731
        name, url, model, prompt, tokenizer, args.concurrency, args.rounds, args.max_tokens, args.client_procs)
    results: dict[str, dict[int, dict]] = {}
    if args.url:
        results["endpoint"] = measure("endpoint", args.url, loadtest.endpoint_model(args.url, None))
    for name in [] if args.url else args.servers:
        proc, url = launch(name, folder, args)
        try:
            wait_ready(url, proc)
            results[name] = measure(name, url, folder if name == "transformers" else Path(folder).name)
        finally:
            loadtest.stop(proc)
    spec = f", tunesmith-spec: --speculative {args.speculative}" if args.speculative else ""
    table = loadtest.render(results, f"model {args.model}, prompt ~{args.prompt_tokens} tokens, max_tokens "
                                     f"{args.max_tokens}, greedy, streaming{spec}")
    print("\n" + table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
