"""Greedy decode time of the vLLM backend with and without speculative decoding, one stream, in process.

    .venv-vllm/bin/python bench/vllm_speculative.py                       # plain
    .venv-vllm/bin/python bench/vllm_speculative.py --speculative ngram:4 # vLLM's prompt lookup
    .venv-vllm/bin/python bench/vllm_speculative.py --speculative draft=runs/small/final --model runs/big/final

The prompt asks the model to copy a list, the case prompt lookup is for; the answer is the same with and without
(greedy), and the best of --repeats timed runs is printed.
"""

from __future__ import annotations

import argparse
import time

PROMPT = ("Copy this list exactly, twice: apple, river, stone, cloud, maple, tiger, amber, frost, lemon, orbit, pearl, "
          "quartz, apple, river, stone, cloud, maple, tiger.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--speculative", default=None, help="draft=MODEL or ngram[:N] (default: none)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from tunesmith.infer import SamplingParams, load_engine

    engine = load_engine("vllm", model=args.model, **({"speculative": args.speculative} if args.speculative else {}))
    prompt = [[{"role": "user", "content": PROMPT}]]
    try:
        engine.chat(prompt, SamplingParams(max_tokens=8))  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            answer = engine.chat(prompt, SamplingParams(max_tokens=args.max_tokens))[0].choices[0]
            times.append(time.perf_counter() - start)
        best = min(times)
        print(f"speculative={args.speculative}: {answer.completion_tokens} tokens in {best:.2f} s "
              f"({best / answer.completion_tokens * 1000:.1f} ms/token, best of {args.repeats}); "
              f"answer starts {answer.text[:50]!r}")
    finally:
        engine.shutdown()


if __name__ == "__main__":  # vLLM's engine process is spawned: the module must not start one when imported
    main()
